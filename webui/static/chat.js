// The chat page: streams answers from /ui/api/chat/completions, which runs the gateway's proxy
// pipeline as the logged-in user (their limits, quota and accounting). The page holds no API
// key: the session cookie (HttpOnly) and the CSRF token authenticate it.
import { api, ApiError, csrfHeaders, el, fmtInt, fmtNum, fmtSeconds, loadSession, toLogin, wireLogout } from "./common.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const MODEL_KEY = "gatewayctl.model"; // only the model's name is remembered, never a secret
const history = []; // finished turns: {role, content}
let controller = null;
let blockedUntil = 0;

// ---------------------------------------------------------------- account and models

function showAccountProblem(message) {
  $("account-banner").textContent = message;
  $("account-banner").hidden = !message;
}

async function refreshAccount() {
  try {
    const me = await api("GET", "/ui/api/me");
    showAccountProblem("");
    renderQuota(me);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) return toLogin();
    if (exc instanceof ApiError && exc.code === "account_suspended") {
      showAccountProblem("Your account is suspended: you cannot chat until an admin resumes it.");
      $("quota-text").textContent = "";
      $("quota-bar").hidden = true;
    }
  }
}

function renderQuota(me) {
  const bar = $("quota-bar");
  if (me.quota === null) {
    $("quota-text").textContent = `Unlimited tokens · ${fmtInt(me.total_tokens)} used so far`;
    bar.hidden = true;
  } else {
    $("quota-text").textContent = `${fmtInt(me.remaining)} of ${fmtInt(me.quota)} tokens left`;
    const share = me.quota ? Math.min(1, me.total_tokens / me.quota) : 1;
    bar.hidden = false;
    bar.firstElementChild.style.width = `${share * 100}%`;
    bar.className = `bar ${share >= 1 ? "full" : share >= 0.8 ? "high" : ""}`;
  }
  const limits = [];
  if (me.max_tokens !== null) limits.push(`up to ${fmtInt(me.max_tokens)} tokens per answer`);
  if (me.rps !== null) limits.push(`${fmtNum(me.rps)} requests/s`);
  $("limits-text").textContent = limits.length ? `Limits: ${limits.join(" · ")}` : "";
}

async function loadModels() {
  const select = $("model");
  try {
    const answer = await api("GET", "/ui/api/models");
    const names = (answer.data || [])
      .map((m) => m.id)
      .filter((id) => typeof id === "string" && !/embed/i.test(id))
      .sort();
    select.replaceChildren(...names.map((name) => el("option", { value: name }, name)));
    const saved = localStorage.getItem(MODEL_KEY);
    if (saved && names.includes(saved)) select.value = saved;
    if (!names.length) {
      select.append(el("option", { value: "" }, "no models available"));
      showAccountProblem("No chat model is available to your account. Ask an admin.");
    }
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) return toLogin();
    select.replaceChildren(el("option", { value: "" }, "unavailable"));
    showAccountProblem(`Could not load the model list: ${exc.message}`);
  }
}

// ---------------------------------------------------------------- conversation

function scrollToEnd() {
  window.scrollTo({ top: document.body.scrollHeight });
}

function addUserMessage(text) {
  $("empty").hidden = true;
  $("conversation").append(el("div", { class: "msg user" }, el("div", { class: "bubble" }, text)));
  scrollToEnd();
}

function addAssistantMessage() {
  const bubble = el("div", { class: "bubble streaming", "aria-busy": "true" });
  const meta = el("div", { class: "meta" });
  const node = el("div", { class: "msg assistant" }, bubble, meta);
  $("conversation").append(node);
  scrollToEnd();
  return { node, bubble, meta };
}

function showError(turn, text, { notice = false, detail = null, retryIn = null } = {}) {
  const box = el("div", { class: `msg-error ${notice ? "notice" : ""}`, role: "alert" });
  const main = el("span", {}, text);
  box.append(main);
  if (detail) box.append(el("div", { class: "muted" }, detail));
  turn.node.append(box);
  if (retryIn) countdown(main, retryIn);
  scrollToEnd();
}

function countdown(node, seconds) {
  blockedUntil = Date.now() + seconds * 1000;
  const tick = () => {
    const left = (blockedUntil - Date.now()) / 1000;
    if (left <= 0) {
      node.textContent = "Rate limit reached. You can send again now.";
      return;
    }
    node.textContent = `Rate limit reached: try again in ${fmtSeconds(left)}.`;
    setTimeout(tick, Math.min(1000, left * 1000));
  };
  tick();
}

function explain(turn, exc) {
  const { status, code, message } = exc;
  if (status === 429) {
    showError(turn, "", { notice: true, detail: message, retryIn: exc.retryAfter || 1 });
  } else if (status === 401) {
    showError(turn, "Your session has ended (logged out, or your password changed). Log in again.");
    setTimeout(toLogin, 2500);
  } else if (code === "insufficient_quota") {
    showError(turn, "Your token quota is used up: ask an admin to raise it.", { detail: message });
  } else if (code === "account_suspended") {
    showError(turn, "Your account is suspended: ask an admin to resume it.");
  } else if (status === 403) {
    showError(turn, message);
  } else if (status === 502 || status === 503 || status === 504) {
    showError(turn, `The model server is unavailable (HTTP ${status}).`, { detail: message });
  } else if (status >= 500) {
    showError(turn, `The model server failed (HTTP ${status}).`, { detail: message });
  } else {
    showError(turn, `The model server refused the request (HTTP ${status}).`, { detail: message });
  }
}

function describeUsage(usage, model, seconds, finish) {
  const parts = [model];
  if (usage) {
    parts.push(
      `${fmtInt(usage.prompt_tokens)} prompt + ${fmtInt(usage.completion_tokens)} completion = ${fmtInt(usage.total_tokens)} tokens`,
    );
  }
  parts.push(`${fmtNum(seconds)} s`);
  if (finish === "length") parts.push("stopped at the token limit");
  return parts.join(" · ");
}

// Reads the SSE stream; calls onChunk(parsed JSON) per event; returns true if [DONE] came.
async function readEvents(response, onChunk) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let done = false;
  for (;;) {
    const { value, done: end } = await reader.read();
    if (end) break;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") {
          done = true;
          continue;
        }
        try {
          onChunk(JSON.parse(data));
        } catch (exc) {
          if (!(exc instanceof SyntaxError)) throw exc;
        }
      }
    }
  }
  return done;
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("model").disabled = busy;
  if (busy) $("stop").focus();
  else $("prompt").focus();
}

async function send() {
  const prompt = $("prompt");
  const text = prompt.value.trim();
  const model = $("model").value;
  if (!text || controller) return;
  if (!model) {
    showAccountProblem("Pick a model first.");
    return;
  }
  prompt.value = "";
  autoGrow();
  addUserMessage(text);
  const turn = addAssistantMessage();
  const system = $("system").value.trim();
  const messages = [
    ...(system ? [{ role: "system", content: system }] : []),
    ...history,
    { role: "user", content: text },
  ];
  controller = new AbortController();
  setBusy(true);
  let answer = "";
  let usage = null;
  let finish = null;
  let streamError = null;
  let pending = false;
  let stopped = false;
  let complete = false;
  const started = performance.now();
  const paint = () => {
    pending = false;
    renderMarkdown(turn.bubble, answer);
    scrollToEnd();
  };
  try {
    const response = await fetch("/ui/api/chat/completions", {
      method: "POST",
      headers: csrfHeaders({ "content-type": "application/json", accept: "text/event-stream" }),
      body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } }),
      signal: controller.signal,
      cache: "no-store",
    });
    if (!response.ok) {
      let body = null;
      try {
        body = await response.json();
      } catch {
        body = null;
      }
      throw new ApiError(response.status, body, response.headers);
    }
    complete = await readEvents(response, (chunk) => {
      if (chunk.error) {
        streamError = chunk.error.message || String(chunk.error);
        return;
      }
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.finish_reason) finish = choice.finish_reason;
      if (choice.delta && typeof choice.delta.content === "string" && choice.delta.content) {
        answer += choice.delta.content;
        if (!pending) {
          pending = true;
          requestAnimationFrame(paint);
        }
      }
    });
    if (streamError) {
      showError(turn, "The model server failed in the middle of the answer.", { detail: streamError });
    } else if (!complete) {
      showError(turn, "The answer was cut off: the connection to the model server ended early.");
    }
  } catch (exc) {
    if (exc.name === "AbortError") stopped = true;
    else if (exc instanceof ApiError) explain(turn, exc);
    else showError(turn, "The gateway could not be reached. Check your connection and try again.");
    if (!answer && !stopped && exc instanceof ApiError && !prompt.value) {
      prompt.value = text; // nothing was answered: keep the question for another try
      autoGrow();
    }
  } finally {
    controller = null;
    paint();
    turn.bubble.classList.remove("streaming");
    turn.bubble.removeAttribute("aria-busy");
    const seconds = (performance.now() - started) / 1000;
    if (stopped) {
      turn.meta.textContent = `${model} · stopped after ${fmtNum(seconds)} s · what was generated is charged`;
      turn.node.dataset.state = "stopped";
    } else if (answer || usage) {
      turn.meta.textContent = describeUsage(usage, model, seconds, finish);
      turn.node.dataset.state = complete && !streamError ? "done" : "failed";
    } else {
      turn.node.dataset.state = "failed";
    }
    if (!answer && !stopped) turn.bubble.hidden = true;
    if (answer) history.push({ role: "user", content: text }, { role: "assistant", content: answer });
    setBusy(false);
    // The gateway settles a stopped stream when it sees the disconnect: look again shortly.
    refreshAccount();
    if (stopped) setTimeout(refreshAccount, 800);
  }
}

function autoGrow() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  prompt.style.height = `${prompt.scrollHeight + 2}px`;
}

function newChat() {
  if (controller) controller.abort();
  history.length = 0;
  for (const node of [...$("conversation").querySelectorAll(".msg")]) node.remove();
  $("empty").hidden = false;
  $("prompt").focus();
}

// ---------------------------------------------------------------- start

async function start() {
  const session = await loadSession();
  if (!session.user) return toLogin();
  $("whoami").textContent = `Signed in as ${session.user}`;
  $("nav").hidden = session.role !== "admin";
  wireLogout();
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("prompt").addEventListener("input", autoGrow);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", newChat);
  $("model").addEventListener("change", () => localStorage.setItem(MODEL_KEY, $("model").value));
  await Promise.all([loadModels(), refreshAccount()]);
  setInterval(refreshAccount, 10_000);
}

start();
