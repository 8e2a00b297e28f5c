// Shared by every page: the JSON API with its CSRF token, safe DOM building, number formats.
// Nothing here (or anywhere in the UI) assigns innerHTML: text from users and models is always
// inserted as text nodes.

let csrfToken = null;

export class ApiError extends Error {
  constructor(status, body, headers) {
    const error = (body && body.error) || {};
    super(typeof error.message === "string" ? error.message : `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.field = error.param || null;
    this.headers = headers;
  }

  // Seconds until a retry may succeed, from Retry-After(-ms), or null.
  get retryAfter() {
    const ms = Number(this.headers && this.headers.get("retry-after-ms"));
    if (ms > 0) return ms / 1000;
    const s = Number(this.headers && this.headers.get("retry-after"));
    return s > 0 ? s : null;
  }
}

export async function loadSession() {
  const response = await fetch("/ui/api/session", { cache: "no-store" });
  const data = await response.json();
  csrfToken = data.csrf;
  return data;
}

export function csrfHeaders(extra = {}) {
  return { "x-csrf-token": csrfToken || "", ...extra };
}

export async function api(method, path, body) {
  const headers = { accept: "application/json" };
  if (method !== "GET") Object.assign(headers, csrfHeaders());
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data, response.headers);
  if (data && typeof data.csrf === "string") csrfToken = data.csrf;
  return data;
}

// The session ended (expired, password changed, user removed): back to the login form.
export function toLogin() {
  window.location.assign("/login");
}

export async function logout() {
  try {
    await api("POST", "/ui/api/logout");
  } finally {
    toLogin();
  }
}

// el("td", {class: "x", dataset: {label: "User"}}, "text", child) -- strings become text nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

export function fmtInt(n) {
  return integer.format(n);
}

export function fmtNum(n) {
  return decimal.format(n);
}

// 950, 1.2k, 34k, 1.5M: for axes and tight cells.
export function fmtShort(n) {
  if (n < 1000) return fmtInt(n);
  if (n < 10_000) return `${decimal.format(Math.round(n / 100) / 10)}k`;
  if (n < 1_000_000) return `${fmtInt(Math.round(n / 1000))}k`;
  return `${decimal.format(Math.round(n / 100_000) / 10)}M`;
}

export function fmtAgo(ts, now) {
  if (!ts) return "never";
  const s = Math.max(0, now - ts);
  if (s < 5) return "just now";
  if (s < 60) return `${Math.floor(s)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function fmtSeconds(s) {
  return s < 10 ? `${Math.max(0.1, Math.ceil(s * 10) / 10)} s` : `${Math.ceil(s)} s`;
}

// Copy text; falls back to selecting it where the Clipboard API is unavailable (plain http).
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (input) {
      input.focus();
      input.select();
      return document.execCommand("copy");
    }
    return false;
  }
}

export function wireLogout() {
  const button = document.getElementById("logout");
  if (button) button.addEventListener("click", logout);
}
