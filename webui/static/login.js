// The login form: posts the credentials as JSON with the anonymous session's CSRF token.
import { api, ApiError, loadSession } from "./common.js";

const form = document.getElementById("login-form");
const error = document.getElementById("login-error");
const button = document.getElementById("sign-in");
const ready = loadSession();

function showError(message) {
  error.textContent = message;
  error.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const username = form.username.value.trim();
  const password = form.password.value;
  if (!username || !password) {
    showError("Enter your user name and password.");
    return;
  }
  button.disabled = true;
  error.hidden = true;
  try {
    await ready;
    const answer = await api("POST", "/ui/api/login", { username, password });
    window.location.assign(answer.home);
  } catch (exc) {
    if (exc instanceof ApiError) {
      showError(exc.message);
      if (exc.status === 401) form.password.select();
    } else {
      showError("The gateway could not be reached. Try again.");
    }
    button.disabled = false;
  }
});
