from batchpredict.cli import main

main()
