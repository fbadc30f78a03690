// Every call to the server goes through `api()`: the public REST API, nothing private.
// When the server answers 401 it asks for a token (a modal form), keeps it in sessionStorage
// (this tab only) and retries with `Authorization: Bearer TOKEN`.

const TOKEN_KEY = "batchpredict.token";

export const getToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

const listeners = new Set();
export const onTokenChange = (fn) => listeners.add(fn);

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  listeners.forEach((fn) => fn(token));
}

export class ApiError extends Error {
  constructor(httpStatus, body) {
    const e = (body && body.error) || {};
    super(e.message || `The server answered HTTP ${httpStatus}.`);
    this.httpStatus = httpStatus;
    this.status = e.status || "";
    this.body = body;
  }
}

let asking = null;

/** Show the token form; resolves once a token is entered, rejects when the user cancels. */
export function askForToken(message) {
  if (asking) return asking;
  asking = new Promise((resolve, reject) => {
    const dlg = document.getElementById("token-dialog");
    const form = document.getElementById("token-form");
    const input = document.getElementById("token-input");
    document.getElementById("token-message").textContent = message;
    input.value = "";
    dlg.returnValue = "";
    const submit = (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      setToken(value);
      dlg.close("ok");
    };
    const cancel = () => dlg.close("cancel");
    form.addEventListener("submit", submit);
    document.getElementById("token-cancel").addEventListener("click", cancel);
    dlg.addEventListener("close", () => {
      form.removeEventListener("submit", submit);
      document.getElementById("token-cancel").removeEventListener("click", cancel);
      asking = null;
      if (dlg.returnValue === "ok") resolve();
      else reject(new ApiError(401, { error: { message, status: "UNAUTHENTICATED" } }));
    }, { once: true });
    dlg.showModal();
    input.focus();
  });
  return asking;
}

/**
 * Call the API. `json` sends a JSON body, `form` a FormData (file uploads). Returns the parsed
 * JSON reply, or with `raw` the Response itself. Throws ApiError with the server's message.
 */
export async function api(path, { method = "GET", json, form, raw = false } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    let body;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (form) {
      body = form;
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: "no-store" });
    } catch (e) {
      throw new ApiError(0, { error: {
        message: `Cannot reach the server (${e.message}). Is batchpredict serve running?`,
        status: "UNAVAILABLE",
      } });
    }
    if (res.status === 401) {
      const data = await res.json().catch(() => ({}));
      const message = (data.error && data.error.message) || "This server needs an access token.";
      if (token) setToken("");
      await askForToken(token ? `The token was not accepted. ${message}` : message);
      continue;
    }
    if (raw && res.ok) return res;
    const text = await res.text();
    let data = {};
    if (text) {
      try { data = JSON.parse(text); } catch { data = { error: { message: text.slice(0, 500) } }; }
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }
}

/** Download a URL as a file, sending the token (a plain link cannot send headers). */
export async function download(path, fileName) {
  const res = await api(path, { raw: true });
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = fileName;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
