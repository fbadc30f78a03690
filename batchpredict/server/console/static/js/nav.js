// Navigation inside the console, for the views; app.js installs the router behind it.
let navigator = (url) => { location.href = url; };

export const setNavigator = (fn) => { navigator = fn; };

/** Show another console page without reloading. */
export const go = (url, options = {}) => navigator(url, options);
