// The console's router: the URL path picks a view; links marked data-link navigate in place.
//   /console/                                                   jobs list   (jobs.js)
//   /console/create                                             create job  (create.js)
//   /console/projects/P/locations/L/batchPredictionJobs/ID      one job     (detail.js)
// Each view is a function (root, params) that renders into `root` and returns a cleanup
// function that stops its timers when the user navigates away.

import { getToken, onTokenChange, setToken } from "./api.js";
import { createView } from "./create.js";
import { detailView } from "./detail.js";
import { jobsView } from "./jobs.js";
import { setNavigator } from "./nav.js";
import { h, replace } from "./ui.js";

const main = document.getElementById("main");
let cleanup = null;

const JOB_PATH = /^projects\/([^/]+)\/locations\/([^/]+)\/batchPredictionJobs\/(\d+)\/?$/;

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  const path = decodeURIComponent(location.pathname.replace(/^\/console\/?/, ""));
  const params = new URLSearchParams(location.search);
  let nav = "";
  main.replaceChildren();
  const match = path.match(JOB_PATH);
  if (path === "" || path === "jobs") {
    nav = "jobs";
    cleanup = jobsView(main, params);
  } else if (path === "create") {
    nav = "create";
    cleanup = createView(main, params);
  } else if (match) {
    nav = "jobs";
    cleanup = detailView(main, `projects/${match[1]}/locations/${match[2]}/batchPredictionJobs/${match[3]}`);
  } else {
    document.title = "Not found · batchpredict";
    replace(main, h("h1", { tabindex: -1 }, "No such page"),
      h("p", {}, "Go to the ", h("a", { href: "/console/", "data-link": true }, "jobs list"), "."));
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

/**
 * Navigate inside the console without reloading the page. Focus goes to the new page's heading,
 * or stays on the control with id `focusId` (a filter that re-renders the list).
 */
function go(url, { replaceState = false, focusId = null } = {}) {
  if (replaceState) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
  const target = (focusId && document.getElementById(focusId)) || main.querySelector("h1");
  if (target) {
    if (target.tagName === "H1") target.setAttribute("tabindex", "-1");
    target.focus();
  }
}
setNavigator(go);

document.addEventListener("click", (event) => {
  const a = event.target.closest("a[data-link]");
  if (!a || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/console")) return;
  event.preventDefault();
  go(url.pathname + url.search);
});
window.addEventListener("popstate", route);

function renderWho() {
  const who = document.getElementById("who");
  if (!getToken()) {
    who.replaceChildren();
    return;
  }
  replace(who, h("span", {}, "Using an access token"),
    h("button", { type: "button", onclick: () => { setToken(""); route(); } }, "Forget token"));
}
onTokenChange(renderWho);
renderWho();
route();
