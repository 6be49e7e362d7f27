// Calling the platform from a page: the Connect protocol (JSON over plain fetch) through the
// gateway, and the service's error (code, message, ErrorInfo reason, field to fix) decoded.

export class RpcError extends Error {
  constructor(code, message, reason, violations) {
    super(message);
    this.code = code; // "invalid_argument", "unauthenticated", ...
    this.reason = reason; // ErrorInfo.reason: "TOKEN_REPLAYED", "NO_MANDATE", ...
    this.violations = violations; // [{field, description}] from google.rpc.BadRequest
  }
}

// POST /healthcode.v1.<Service>/<Method> with a JSON body; the reply as an object.
export async function rpc(method, body, { token, timeoutMs = 10000 } = {}) {
  const headers = {
    "Content-Type": "application/json",
    "Connect-Protocol-Version": "1",
    "Connect-Timeout-Ms": String(timeoutMs),
  };
  if (token) headers["Authorization"] = "Bearer " + token;
  let response;
  try {
    response = await fetch("/healthcode.v1." + method, {
      method: "POST",
      headers,
      body: JSON.stringify(body || {}),
    });
  } catch (e) {
    throw new RpcError("unavailable", "the platform cannot be reached; check the connection", "", []);
  }
  const text = await response.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch (e) {
    data = { message: text };
  }
  if (!response.ok) {
    const details = data.details || [];
    throw new RpcError(
      data.code || "unknown",
      data.message || response.statusText,
      reasonOf(details),
      violationsOf(details),
    );
  }
  return data;
}

function base64Bytes(text) {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((text.length + 3) % 4);
  const raw = atob(padded);
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

// The length-delimited fields of a protobuf message, by field number (enough for ErrorInfo
// and BadRequest, whose fields are strings and messages).
function fieldsOf(bytes) {
  const fields = {};
  let i = 0;
  const varint = () => {
    let value = 0, shift = 0, b;
    do {
      b = bytes[i++];
      value += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80 && i < bytes.length);
    return value;
  };
  while (i < bytes.length) {
    const key = varint();
    const number = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) varint();
    else if (wire === 2) {
      const length = varint();
      (fields[number] = fields[number] || []).push(bytes.slice(i, i + length));
      i += length;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else break;
  }
  return fields;
}

const utf8 = new TextDecoder();

function reasonOf(details) {
  for (const d of details) {
    if (d.type === "google.rpc.ErrorInfo" && d.value) {
      const reason = (fieldsOf(base64Bytes(d.value))[1] || [])[0];
      if (reason) return utf8.decode(reason);
    }
  }
  return "";
}

function violationsOf(details) {
  const out = [];
  for (const d of details) {
    if (d.type === "google.rpc.BadRequest" && d.value) {
      for (const v of fieldsOf(base64Bytes(d.value))[1] || []) {
        const f = fieldsOf(v);
        out.push({
          field: f[1] ? utf8.decode(f[1][0]) : "",
          description: f[2] ? utf8.decode(f[2][0]) : "",
        });
      }
    }
  }
  return out;
}

// What to tell a person about an error: the service's message, and the field to fix.
export function describe(error) {
  if (!(error instanceof RpcError)) return String(error);
  const fields = (error.violations || []).map((v) => `${v.field}: ${v.description}`);
  return [error.message, ...fields].filter(Boolean).join(" — ");
}

export function show(element, visible) {
  element.hidden = !visible;
}

export function say(element, text, kind = "info") {
  element.textContent = text;
  element.dataset.kind = kind;
  element.hidden = !text;
}
