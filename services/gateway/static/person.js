// A person's page: sign in by SMS code, register oneself or an elderly relative, declare, and
// show a live code that is replaced before it expires. Everything stays in this page's memory:
// closing it signs out.
import { rpc, describe, say, show } from "/static/connect.js";

const $ = (id) => document.getElementById(id);
const COLOURS = {
  COLOUR_GREEN: ["green", "绿码", "Green"],
  COLOUR_YELLOW: ["yellow", "黄码", "Yellow"],
  COLOUR_RED: ["red", "红码", "Red"],
};

const state = {
  token: "",
  me: null, // {idNumber, masked}
  people: [], // [{label, maskedName, ref, proxy}]
  selected: 0,
  deviceId: deviceId(),
};
// What tests and curious people may read: the code on screen and each replacement of it.
window.healthCode = { token: "", expiresAt: 0, rotations: [] };

function deviceId() {
  let id = localStorage.getItem("healthcode-device");
  if (!id) {
    id = "web-" + crypto.getRandomValues(new Uint32Array(2)).join("");
    localStorage.setItem("healthcode-device", id);
  }
  return id;
}

function call(method, body) {
  return rpc(method, body, { token: state.token });
}

// --- signing in ---------------------------------------------------------------------------

$("code-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  say($("sign-in-message"), "");
  try {
    const reply = await rpc("AccountService/RequestSignInCode", {
      idNumber: $("id-number").value.trim(),
      phone: $("phone").value.trim(),
    });
    show($("sign-in-form"), true);
    // Only a development stack (HEALTHCODE_SMS=reply) sends the code back; then fill it in.
    if (reply.developmentCode) {
      $("sms-code").value = reply.developmentCode;
      show($("dev-code-note"), true);
    }
    say($("sign-in-message"), `验证码已发送至 ${reply.maskedPhone || ""} · Code sent to ${reply.maskedPhone || "your phone"}`, "ok");
    $("sms-code").focus();
  } catch (error) {
    say($("sign-in-message"), describe(error), "error");
  }
});

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const idNumber = $("id-number").value.trim();
  try {
    const reply = await rpc("AccountService/SignIn", { idNumber, code: $("sms-code").value.trim() });
    state.token = reply.token;
    state.me = { idNumber, masked: reply.maskedIdNumber };
    $("id-number").value = "";
    $("phone").value = "";
    show($("sign-in"), false);
    show($("signed-in"), true);
    $("me-masked").textContent = reply.maskedIdNumber;
    state.people = [{ label: "本人 Myself", maskedName: reply.maskedIdNumber, ref: { idNumber }, proxy: false }];
    await loadRelatives();
    renderPeople();
  } catch (error) {
    say($("sign-in-message"), describe(error), "error");
  }
});

function proxyActor() {
  return { role: "ACTOR_ROLE_FAMILY_PROXY", person: { idNumber: state.me.idNumber } };
}

async function loadRelatives() {
  try {
    const reply = await call("DeclarationService/ListMandates", { actor: proxyActor() });
    for (const m of reply.mandates || []) addRelative(m.maskedName, m.maskedIdNumber, m.personKey);
  } catch (error) {
    // Not fatal: relatives registered now still appear.
  }
}

function addRelative(maskedName, maskedIdNumber, personKey) {
  if (state.people.some((p) => p.ref.personKey === personKey)) return;
  state.people.push({
    label: `${maskedName} (${maskedIdNumber})`,
    maskedName,
    ref: { personKey },
    proxy: true,
  });
}

// --- whom the page acts for ---------------------------------------------------------------

function renderPeople() {
  const list = $("people");
  list.replaceChildren();
  state.people.forEach((person, index) => {
    const item = document.createElement("li");
    const label = document.createElement("label");
    const radio = document.createElement("input");
    radio.type = "radio";
    radio.name = "person";
    radio.value = String(index);
    radio.checked = index === state.selected;
    radio.addEventListener("change", () => select(index));
    label.append(radio, " " + person.label);
    item.append(label);
    list.append(item);
  });
  const who = state.people[state.selected];
  $("declare-for").textContent = who.label;
  $("code-for").textContent = who.label;
  $("consent-for").textContent = who.label;
}

function select(index) {
  state.selected = index;
  stopCode();
  $("consent-list").replaceChildren();
  renderPeople();
}

function acting() {
  const who = state.people[state.selected];
  // Oneself: the token says who acts. A relative: as their family proxy, naming oneself.
  return who.proxy ? { actor: proxyActor(), person: who.ref } : { person: who.ref };
}

// --- registering --------------------------------------------------------------------------

for (const radio of document.querySelectorAll('input[name="register-for"]')) {
  radio.addEventListener("change", () => {
    const self = radio.value === "self" && radio.checked;
    $("reg-id-number").readOnly = self;
    $("reg-id-number").value = self ? state.me.idNumber : "";
  });
}

$("register-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const forSelf = document.querySelector('input[name="register-for"]:checked').value === "self";
  const phones = $("reg-phones").value.split(/[,，\s]+/).filter(Boolean);
  const body = {
    name: $("reg-name").value.trim(),
    idNumber: forSelf ? state.me.idNumber : $("reg-id-number").value.trim(),
    phones,
  };
  if (!forSelf) body.actor = proxyActor();
  try {
    const reply = await call("DeclarationService/Register", body);
    const person = reply.person;
    if (!forSelf) {
      addRelative(person.maskedName, person.maskedIdNumber, person.personKey);
      state.selected = state.people.findIndex((p) => p.ref.personKey === person.personKey);
    } else {
      state.people[0].maskedName = person.maskedName;
      state.people[0].label = `本人 Myself: ${person.maskedName}`;
      state.selected = 0;
    }
    stopCode();
    renderPeople();
    $("register-form").reset();
    const what = reply.created ? "已登记 Registered" : "已登记过 Already registered";
    say($("register-message"), `${what}: ${person.maskedName} ${person.maskedIdNumber}`, "ok");
  } catch (error) {
    say($("register-message"), describe(error), "error");
  }
});

// --- declaring ----------------------------------------------------------------------------

$("declare-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    ...acting(),
    symptoms: [...document.querySelectorAll('input[name="symptom"]:checked')].map((c) => c.value),
    caseContact: $("case-contact").checked,
  };
  const temperature = $("temperature").value.trim();
  if (temperature) body.temperatureCelsius = Number(temperature);
  try {
    const reply = await call("DeclarationService/Declare", body);
    say($("declare-message"), `已申报 Declared for ${reply.declaration.day}`, "ok");
    $("declare-form").reset();
  } catch (error) {
    say($("declare-message"), describe(error), "error");
  }
});

// --- the live code ------------------------------------------------------------------------

let refreshTimer = 0;
let countdownTimer = 0;
let qrUrl = "";

function stopCode() {
  clearTimeout(refreshTimer);
  clearInterval(countdownTimer);
  show($("code"), false);
  window.healthCode.token = "";
}

$("show-button").addEventListener("click", () => {
  stopCode();
  showCode();
});

async function showCode() {
  const started = Date.now();
  let reply;
  try {
    reply = await call("DisplayService/Show", {
      ...acting(),
      device: { deviceId: state.deviceId, place: "mini-program" },
    });
  } catch (error) {
    say($("code-message"), describe(error), "error");
    // A refresh that failed is tried again; the code on screen stays until it expires.
    if (window.healthCode.token) refreshTimer = setTimeout(showCode, 2000);
    return;
  }
  // The token's life by the server's own clock; counted from before the call, so the page
  // never believes a code lives longer than it does.
  const lifeMs = Math.max(1000, Date.parse(reply.expiresAt) - Date.parse(reply.issuedAt));
  const expiresAt = started + lifeMs;
  const [colour, zh, en] = COLOURS[(reply.verdict || {}).colour] || ["none", "无结果", "No colour"];
  const svg = await fetch(`/qr?colour=${colour}`, { method: "POST", body: reply.token });
  if (!svg.ok) {
    say($("code-message"), "二维码生成失败 the QR code could not be drawn", "error");
    return;
  }
  const svgText = await svg.text();
  const url = URL.createObjectURL(new Blob([svgText], { type: "image/svg+xml" }));
  $("qr").src = url;
  if (qrUrl) URL.revokeObjectURL(qrUrl);
  qrUrl = url;

  const previous = window.healthCode;
  if (previous.token) {
    previous.rotations.push({ replacedAt: Date.now(), oldExpiresAt: previous.expiresAt });
  }
  previous.token = reply.token;
  previous.expiresAt = expiresAt;
  previous.svg = svgText;
  const box = $("code");
  box.dataset.colour = colour;
  box.dataset.token = reply.token;
  box.dataset.rotations = String(previous.rotations.length);
  $("colour-label").textContent = `${zh} ${en}`;
  $("masked-name").textContent = reply.maskedName;
  show(box, true);
  say($("code-message"), "");

  // A new code well before this one expires: a third of its life early, at least 2 s.
  const margin = Math.max(2000, lifeMs / 3);
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(showCode, Math.max(500, expiresAt - margin - Date.now()));
  clearInterval(countdownTimer);
  const tick = () => {
    if (Date.now() >= expiresAt) {
      // Every refresh failed: an expired code must not stay on screen looking valid.
      show(box, false);
      say($("code-message"), "二维码已过期，请重新亮码 The code expired: press Show again", "error");
      clearInterval(countdownTimer);
      return;
    }
    const seconds = Math.max(0, Math.ceil((expiresAt - margin - Date.now()) / 1000));
    $("countdown").textContent = String(seconds);
    $("countdown-en").textContent = String(seconds);
  };
  tick();
  countdownTimer = setInterval(tick, 250);
}

// --- who looked me up (partner look-ups, consent) ------------------------------------------

const PURPOSES = {
  PARTNER_PURPOSE_TRIAGE: "医院分诊 hospital triage",
  PARTNER_PURPOSE_BUS: "公交实名卡 bus transit card",
  PARTNER_PURPOSE_EXAM: "考试 exam",
};

$("consent-button").addEventListener("click", () => loadConsent());

async function loadConsent() {
  let reply;
  try {
    reply = await call("ConsentService/ListPartnerAccess", acting());
  } catch (error) {
    say($("consent-message"), describe(error), "error");
    return;
  }
  const list = $("consent-list");
  list.replaceChildren();
  const accesses = reply.accesses || [];
  // One button per partner: withdraw, or restore a withdrawn one (also one with no look-up left).
  const withdrawn = new Set((reply.revoked || []).map((r) => r.principal));
  const partners = [...new Set([...accesses.map((a) => a.partner.principal), ...withdrawn])];
  for (const a of accesses) {
    const item = document.createElement("li");
    item.className = "consent-access";
    item.dataset.partner = a.partner.principal;
    const when = new Date(a.at).toLocaleString("zh-CN", { hour12: false });
    const outcome = a.allowed ? "已查询 answered" : `已拒绝 refused (${a.refusal})`;
    item.textContent = `${when} · ${a.partner.principal} · ${PURPOSES[a.purpose] || a.purpose} · ${a.place || ""} · ${outcome}`;
    list.append(item);
  }
  for (const partner of partners) {
    const item = document.createElement("li");
    item.className = "consent-partner";
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.partner = partner;
    const isWithdrawn = withdrawn.has(partner);
    button.dataset.action = isWithdrawn ? "restore" : "revoke";
    button.textContent = isWithdrawn
      ? `恢复授权 Restore ${partner}`
      : `撤销授权 Withdraw ${partner}`;
    button.addEventListener("click", () => changeConsent(partner, !isWithdrawn));
    item.append(button);
    list.append(item);
  }
  const count = accesses.length;
  say($("consent-message"), count ? "" : "暂无查询记录 No partner has looked this person up", "ok");
}

async function changeConsent(partner, withdraw) {
  const method = withdraw ? "ConsentService/RevokePartnerAccess" : "ConsentService/RestorePartnerAccess";
  try {
    await call(method, { ...acting(), partner });
    await loadConsent();
    say(
      $("consent-message"),
      withdraw ? `已撤销 ${partner} 的授权 Access withdrawn` : `已恢复 ${partner} 的授权 Access restored`,
      "ok",
    );
  } catch (error) {
    say($("consent-message"), describe(error), "error");
  }
}
