"use strict";
// Passkeys (WebAuthn) for the coc-mail web view: the one script it has, only on the pages
// that register or use a passkey. It needs a browser with PublicKeyCredential's JSON helpers
// (parseCreationOptionsFromJSON / toJSON: Chrome 129, Firefox 119, Safari 18.4 and later).
async function post(url, body) {
  const r = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
  });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function show(text) {
  document.getElementById("passkey-status").textContent = text;
}

document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("passkey");
  if (!button) return;
  const csrf = button.dataset.csrf;
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      if (button.dataset.mode === "register") {
        const options = await post("/account/passkeys/options", {csrf});
        const credential = await navigator.credentials.create(
          {publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options)});
        await post("/account/passkeys", {csrf, credential: credential.toJSON()});
        location.assign("/account");
      } else {
        const options = await post("/passkey/options", {csrf});
        const credential = await navigator.credentials.get(
          {publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options)});
        await post("/passkey/verify", {csrf, credential: credential.toJSON()});
        location.assign("/");
      }
    } catch (e) {
      show("Not done: " + e.message);
      button.disabled = false;
    }
  });
});
