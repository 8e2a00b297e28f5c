// The admin dashboard: a live users table (polled every second), inline limit editing,
// account actions, the usage chart and upstream health. Every change goes to the JSON API,
// which checks the admin role and writes users.toml through the same store as the CLI.
import {
  api,
  ApiError,
  copyText,
  el,
  fmtAgo,
  fmtInt,
  fmtShort,
  loadSession,
  toLogin,
  wireLogout,
} from "./common.js";
import { barChart, sparkline } from "./chart.js";

const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;
const LIMIT_LABELS = {
  rps: "Req/s",
  burst: "Burst",
  quota: "Quota (tokens)",
  max_tokens: "Max tokens",
  concurrency: "Concurrency",
  models: "Models",
};

const $ = (id) => document.getElementById(id);
const tbody = document.querySelector("#users tbody");
const rows = new Map(); // user name -> {tr, inputs: {field: input}, ...cells}
let state = null;
let me = null;
let pollTimer = null;

// ---------------------------------------------------------------- formatting

function limitText(field, value) {
  if (value === null || value === undefined) return "";
  if (field === "models") return value.join(", ");
  return String(value);
}

function windowCell(win) {
  return [
    el("span", { class: "num" }, `${fmtInt(win.requests)} req`),
    el("small", { class: "num" }, `${fmtShort(win.tokens)} tokens`),
  ];
}

// ---------------------------------------------------------------- one row

function limitInput(user, field) {
  const id = `limit-${user}-${field}`;
  const errorId = `${id}-error`;
  const input = el("input", {
    id,
    class: field === "models" ? "models-input" : "limit-input",
    inputmode: field === "models" ? null : field === "rps" ? "decimal" : "numeric",
    placeholder: field === "models" ? "all" : "∞",
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": errorId,
    dataset: { field, user, server: "" },
  });
  const label = el("label", { class: "sr-only", for: id }, `${LIMIT_LABELS[field] || field} for ${user}`);
  const error = el("div", { class: "field-error", id: errorId, role: "alert" });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      saveLimit(input, error);
    } else if (event.key === "Escape") {
      input.value = input.dataset.server;
      clearFieldError(input, error);
    }
  });
  input.addEventListener("change", () => saveLimit(input, error));
  return { input, label, error };
}

function clearFieldError(input, error) {
  input.removeAttribute("aria-invalid");
  error.textContent = "";
}

async function saveLimit(input, error) {
  const { field, user } = input.dataset;
  if (input.value.trim() === input.dataset.server || input.dataset.saving === "1") return;
  input.dataset.saving = "1";
  try {
    const answer = await api("PATCH", `/ui/api/admin/users/${encodeURIComponent(user)}`, {
      [field]: input.value,
    });
    input.dataset.server = limitText(field, answer.user[field]);
    input.value = input.dataset.server;
    clearFieldError(input, error);
    input.classList.add("saved");
    setTimeout(() => input.classList.remove("saved"), 1500);
    refreshSoon();
  } catch (exc) {
    if (handleAuthError(exc)) return;
    input.setAttribute("aria-invalid", "true");
    error.textContent = exc.message;
  } finally {
    delete input.dataset.saving;
  }
}

function actionButton(text, handler, extraClass = "") {
  return el("button", { type: "button", class: `small ${extraClass}`.trim(), onclick: handler }, text);
}

function buildRow(user) {
  const name = user.user;
  const tr = el("tr", { dataset: { user: name } });
  const refs = { tr, inputs: {}, errors: {} };
  refs.name = el("span", { class: "user-name" }, name);
  refs.role = el("span", { class: "badge" });
  refs.you = el("span", { class: "muted" }, name === me ? " (you)" : "");
  tr.append(el("td", { class: "cell-user", dataset: { label: "User" } }, refs.name, " ", refs.role, refs.you));
  refs.status = el("span", { class: "badge" });
  tr.append(el("td", { dataset: { label: "Status" } }, refs.status));
  for (const field of ["rps", "burst", "quota", "max_tokens", "concurrency", "models"]) {
    const { input, label, error } = limitInput(name, field);
    refs.inputs[field] = input;
    refs.errors[field] = error;
    const td = el("td", { dataset: { label: LIMIT_LABELS[field], field } }, label, input, error);
    if (field === "quota") {
      refs.bar = el("span");
      refs.quotaText = el("div", { class: "quota-text num" });
      td.classList.add("quota");
      td.append(el("div", { class: "bar" }, refs.bar), refs.quotaText);
    }
    tr.append(td);
  }
  refs.hour = el("td", { class: "stat", dataset: { label: "Last hour" } });
  refs.day = el("td", { class: "stat", dataset: { label: "Last 24 h" } });
  refs.inFlight = el("td", { class: "num", dataset: { label: "In flight" } });
  refs.lastSeen = el("td", { class: "stat", dataset: { label: "Last seen" } });
  refs.suspend = actionButton("Suspend", () => toggleSuspend(name));
  const actions = el(
    "div",
    { class: "actions" },
    refs.suspend,
    actionButton("Rotate key", () => rotateKey(name)),
    actionButton("Password", () => resetPassword(name)),
    actionButton("Remove", () => removeUser(name), "danger"),
  );
  tr.append(refs.hour, refs.day, refs.inFlight, refs.lastSeen, el("td", { class: "cell-actions", dataset: { label: "Actions" } }, actions));
  return refs;
}

function updateRow(refs, user, now, fields) {
  refs.role.textContent = user.role;
  refs.role.className = `badge ${user.role === "admin" ? "admin" : ""}`;
  const suspended = user.suspended;
  refs.status.textContent = suspended ? "suspended" : "active";
  refs.status.className = `badge ${suspended ? "suspended" : "active"}`;
  refs.tr.classList.toggle("is-suspended", suspended);
  refs.suspend.textContent = suspended ? "Resume" : "Suspend";
  refs.suspend.setAttribute("aria-label", `${suspended ? "Resume" : "Suspend"} ${user.user}`);
  refs.suspend.disabled = user.user === me;
  for (const [field, input] of Object.entries(refs.inputs)) {
    input.closest("td").hidden = !fields.includes(field);
    const server = limitText(field, user[field]);
    const editing = document.activeElement === input || input.value.trim() !== input.dataset.server;
    input.dataset.server = server;
    if (!editing) input.value = server;
  }
  const quota = user.quota;
  const used = user.used;
  const share = quota ? Math.min(1, used / quota) : 0;
  refs.bar.style.width = `${quota === null ? 0 : quota === 0 ? 100 : share * 100}%`;
  refs.bar.parentElement.className = `bar ${share >= 1 || quota === 0 ? "full" : share >= 0.8 ? "high" : ""}`;
  refs.bar.parentElement.hidden = quota === null;
  refs.quotaText.textContent =
    quota === null
      ? `${fmtShort(used)} used · unlimited`
      : `${fmtShort(used)} used · ${fmtShort(user.remaining)} left`;
  refs.hour.replaceChildren(...windowCell(user.hour));
  refs.day.replaceChildren(...windowCell(user.day), sparkline(user.hourly));
  refs.inFlight.textContent = fmtInt(user.in_flight);
  refs.lastSeen.textContent = fmtAgo(user.last_seen, now);
  if (user.last_seen) refs.lastSeen.title = new Date(user.last_seen * 1000).toLocaleString();
}

// ---------------------------------------------------------------- whole state

function render(next) {
  state = next;
  const fields = next.limit_fields;
  for (const th of document.querySelectorAll("#users th[data-field]")) {
    th.hidden = !fields.includes(th.dataset.field);
  }
  for (const node of document.querySelectorAll("[data-field='models'].field")) {
    node.hidden = !fields.includes("models");
  }
  const seen = new Set();
  next.users.forEach((user, index) => {
    seen.add(user.user);
    let refs = rows.get(user.user);
    if (!refs) {
      refs = buildRow(user);
      rows.set(user.user, refs);
    }
    if (tbody.children[index] !== refs.tr) tbody.insertBefore(refs.tr, tbody.children[index] || null);
    updateRow(refs, user, next.now, fields);
  });
  for (const [name, refs] of rows) {
    if (!seen.has(name)) {
      refs.tr.remove();
      rows.delete(name);
    }
  }
  $("config-banner").hidden = !next.config_error;
  $("config-error").textContent = next.config_error || "";
  renderUpstreams(next.upstreams);
  renderChartOptions(next.users);
  renderChart();
}

function renderUpstreams(upstreams) {
  $("upstreams").replaceChildren(
    ...upstreams.map((u) => {
      const load = u.max_in_flight === null ? `${u.in_flight} in flight` : `${u.in_flight}/${u.max_in_flight} in flight`;
      const state = u.healthy ? (u.detail === "ok" ? "healthy" : u.detail) : `down: ${u.detail}`;
      const models = u.models.length ? ` · ${u.models.join(", ")}` : "";
      return el(
        "div",
        { class: "upstream", dataset: { healthy: String(u.healthy) } },
        el("span", { class: `dot ${u.healthy ? "" : "bad"}`, "aria-hidden": "true" }),
        el("code", {}, u.url),
        el("span", { class: "muted" }, `${state} · ${load}${models}`),
      );
    }),
  );
}

function renderChartOptions(users) {
  const select = $("chart-user");
  const wanted = ["", ...users.map((u) => u.user)];
  const have = [...select.options].map((o) => o.value);
  if (wanted.join("\n") === have.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(
    el("option", { value: "" }, "All users"),
    ...users.map((u) => el("option", { value: u.user }, u.user)),
  );
  select.value = wanted.includes(chosen) ? chosen : "";
}

function renderChart() {
  if (!state) return;
  const who = $("chart-user").value;
  const row = state.users.find((u) => u.user === who);
  const series = row ? row.hourly : state.chart.total;
  const total = series.reduce((a, b) => a + b, 0);
  const whose = row ? row.user : "all users";
  $("chart-total").textContent = `${fmtInt(total)} tokens in the last 24 hours (${whose})`;
  barChart($("chart"), series, state.chart.start, `Tokens per hour for ${whose}`);
}

// ---------------------------------------------------------------- polling

function setLive(ok, text) {
  $("live").firstElementChild.className = `dot ${ok ? "" : "bad"}`;
  $("live-text").textContent = text;
}

function handleAuthError(exc) {
  if (!(exc instanceof ApiError)) return false;
  if (exc.status === 401) {
    toLogin();
    return true;
  }
  if (exc.code === "admin_only") {
    window.location.assign("/");
    return true;
  }
  return false;
}

async function poll() {
  clearTimeout(pollTimer);
  try {
    render(await api("GET", "/ui/api/admin/state"));
    setLive(true, `Live · updated ${new Date().toLocaleTimeString()}`);
    $("poll-banner").hidden = true;
  } catch (exc) {
    if (handleAuthError(exc)) return;
    setLive(false, "Connection lost, retrying…");
    $("poll-banner").textContent = `Could not refresh the dashboard: ${exc.message}`;
    $("poll-banner").hidden = false;
  }
  pollTimer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
}

function refreshSoon() {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(poll, 50);
}

// ---------------------------------------------------------------- actions

async function act(method, path, body) {
  try {
    const answer = await api(method, path, body);
    refreshSoon();
    return answer;
  } catch (exc) {
    if (!handleAuthError(exc)) showActionError(exc.message);
    return null;
  }
}

let actionErrorTimer = null;

function showActionError(message) {
  const banner = $("action-error");
  banner.textContent = message;
  banner.hidden = false;
  clearTimeout(actionErrorTimer);
  actionErrorTimer = setTimeout(() => {
    banner.hidden = true;
  }, 8000);
}

const userPath = (name) => `/ui/api/admin/users/${encodeURIComponent(name)}`;

async function toggleSuspend(name) {
  const user = state && state.users.find((u) => u.user === name);
  if (!user) return;
  await act("POST", `${userPath(name)}/${user.suspended ? "resume" : "suspend"}`);
}

function showSecret(title, label, value, text) {
  $("secret-title").textContent = title;
  $("secret-label").textContent = label;
  $("secret-text").textContent = text;
  $("secret-value").value = value;
  $("secret-copied").textContent = "";
  $("secret-dialog").showModal();
  $("secret-value").select();
}

function confirmAction(title, text, okText) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okText;
  $("confirm-error").hidden = true;
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    const done = (value) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(value);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => done(false);
  });
}

async function rotateKey(name) {
  const ok = await confirmAction(
    `Rotate ${name}'s API key?`,
    "The current key stops working at once. The new key is shown only once.",
    "Rotate key",
  );
  if (!ok) return;
  const answer = await act("POST", `${userPath(name)}/rotate-key`);
  if (answer) {
    showSecret(`New API key for ${name}`, "API key", answer.key, "Copy it now: it is shown only this once (the gateway keeps only a hash).");
  }
}

async function removeUser(name) {
  const ok = await confirmAction(
    `Remove ${name}?`,
    "Their API key and password stop working at once. Their usage history stays in the ledger.",
    "Remove user",
  );
  if (ok) await act("DELETE", userPath(name));
}

function resetPassword(name) {
  const dialog = $("password-dialog");
  const input = $("new-password");
  $("password-title").textContent = `Set a new password for ${name}`;
  input.value = "";
  clearFieldError(input, $("new-password-error"));
  dialog.dataset.user = name;
  dialog.showModal();
}

async function submitPassword(event) {
  event.preventDefault();
  const dialog = $("password-dialog");
  const name = dialog.dataset.user;
  const input = $("new-password");
  try {
    const answer = await api("POST", `${userPath(name)}/password`, { password: input.value });
    dialog.close();
    if (answer.password) {
      showSecret(`New password for ${name}`, "Password", answer.password, "Give it to the user: it is shown only this once.");
    }
    refreshSoon();
  } catch (exc) {
    if (handleAuthError(exc)) return;
    input.setAttribute("aria-invalid", "true");
    $("new-password-error").textContent = exc.message;
  }
}

const ADD_FIELDS = ["name", "password", "rps", "burst", "quota", "max_tokens", "models"];

function openAdd() {
  const form = $("add-form");
  form.reset();
  for (const field of ADD_FIELDS) clearFieldError($(`add-${field}`), $(`add-${field}-error`));
  $("add-error").hidden = true;
  $("add-dialog").showModal();
}

async function submitAdd(event) {
  event.preventDefault();
  const form = $("add-form");
  for (const field of ADD_FIELDS) clearFieldError($(`add-${field}`), $(`add-${field}-error`));
  $("add-error").hidden = true;
  const body = { name: form.name.value.trim(), role: form.role.value, password: form.password.value };
  for (const field of ["rps", "burst", "quota", "max_tokens", "models"]) {
    const value = form[field].value.trim();
    if (value && !form[field].closest("[hidden]")) body[field] = value;
  }
  try {
    const answer = await api("POST", "/ui/api/admin/users", body);
    $("add-dialog").close();
    showSecret(`${answer.user.user} was added`, "API key", answer.key, "Copy the API key now: it is shown only this once (the gateway keeps only a hash).");
    refreshSoon();
  } catch (exc) {
    if (handleAuthError(exc)) return;
    if (exc.field && ADD_FIELDS.includes(exc.field)) {
      $(`add-${exc.field}`).setAttribute("aria-invalid", "true");
      $(`add-${exc.field}-error`).textContent = exc.message;
      $(`add-${exc.field}`).focus();
    } else {
      $("add-error").textContent = exc.message;
      $("add-error").hidden = false;
    }
  }
}

// ---------------------------------------------------------------- start

async function start() {
  const session = await loadSession();
  if (!session.user) return toLogin();
  if (session.role !== "admin") return window.location.assign(session.home);
  me = session.user;
  $("whoami").textContent = `Signed in as ${me}`;
  wireLogout();
  $("add-user").addEventListener("click", openAdd);
  $("add-cancel").addEventListener("click", () => $("add-dialog").close());
  $("add-form").addEventListener("submit", submitAdd);
  $("password-cancel").addEventListener("click", () => $("password-dialog").close());
  $("password-form").addEventListener("submit", submitPassword);
  $("secret-done").addEventListener("click", () => $("secret-dialog").close());
  $("secret-copy").addEventListener("click", async () => {
    const ok = await copyText($("secret-value").value, $("secret-value"));
    $("secret-copied").textContent = ok ? "Copied." : "Select the text and copy it.";
  });
  $("chart-user").addEventListener("change", renderChart);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderChart, 150);
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refreshSoon();
  });
  poll();
}

start();
