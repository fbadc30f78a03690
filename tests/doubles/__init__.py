"""Test doubles: stand-ins for a model, for tests and benchmarks only. Not part of the package.

    instant.InstantTestDouble     a Backend answering "ok" at once (registry: backend = "python",
                                  class = "tests.doubles.instant:InstantTestDouble")
    openai_server.TestDoubleServer  an OpenAI-compatible / Gemini HTTP server with injected faults
                                  (`python -m tests.doubles.openai_server --port P`)

Importable from the repository root (or with it on PYTHONPATH).
"""
