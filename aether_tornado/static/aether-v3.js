// aether-v3.js: a dependency-free browser client for the Aether V3 WebSocket protocol.
//
//   import { AetherClient } from "/v3/client/aether-v3.js";
//   const client = new AetherClient({ groupId: "g_demo", clientId: "c_demo" });
//   client.on("msg", (message) => console.log(message.from_id, message.msg));
//   client.on("roster", (clients) => console.log("present:", clients));
//   client.connect();
//   client.sendGroup("Hello team!");
//
// It reconnects with capped exponential backoff and full jitter, stops when the server
// refuses the handshake for a reason a retry cannot fix (a bad ID, a bad token, a
// forbidden origin, a ban) or closes with a final code (4400 to 4499, an operator's ban
// among them: the "error" event's code is "disconnected"), sends a heartbeat every 30 s, keeps the presence roster from the
// snapshot and join/leave events, and queues messages while reconnecting, up to a bound.
//
// It recovers what it missed while away (recover: true, the default): it keeps the position
// of the last group, direct and broadcast message it got, and the proof the server gave it
// that they are its own, and presents them when it reconnects, so handlers see every message
// once and in order, the missed ones (marked `recovered: true`) before the new ones. When that
// is impossible (away too long, the server lost its history) the "recovery" event says so:
// reload what the page shows.
//
// Tokens: with `getToken` (an async function that returns a fresh token from your
// application), it asks for one before connecting without a token, when the server closes
// the connection because the token expired (close code 3000), and once when a handshake is
// refused as unauthorized; then it reconnects at once and recovers, so no message is missed.

const VISION_ID = /^[A-Za-z0-9_-]{1,64}$/;
// Handshake refusals that no retry can fix: the client stops and reports them.
const FINAL_REFUSALS = new Set(["invalid_id", "unauthorized", "forbidden_origin", "banned"]);
// The server closes a connection with this code when its token expires.
const TOKEN_EXPIRED = 3000;
// The client_id a watcher's connection shows: a watcher joins no roster (watch: true).
const WATCHER = "operator";
// Close codes that mean "do not come back" (an operator's ban among them): the client stops.
const FINAL_CLOSE = { from: 4400, to: 4499 };
// The stream a recorded message belongs to, by its target.
const STREAM_OF_TARGET = { group: "group", direct: "client", broadcast: "broadcast" };

export class AetherError extends Error {
  constructor(code, message, errors = []) {
    super(message);
    this.name = "AetherError";
    this.code = code;
    this.errors = errors;
  }
}

function visionIdProblem(value) {
  if (typeof value !== "string" || !VISION_ID.test(value)) return "must be 1 to 64 of A-Z a-z 0-9 _ -";
  if (/^[0-9]+$/.test(value)) return "must not be all digits";
  return null;
}

function defaultBaseUrl() {
  if (typeof location === "undefined") return "ws://127.0.0.1:8888";
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}`;
}

export class AetherClient {
  constructor({
    groupId,
    clientId,
    token = null,
    getToken = null,
    url = defaultBaseUrl(),
    heartbeatMs = 30000,
    backoffInitialMs = 500,
    backoffMaxMs = 30000,
    maxQueue = 100,
    recover = true,
    watch = false,
    apiKey = null,
  }) {
    if (watch) clientId = WATCHER;
    for (const [field, value] of [["groupId", groupId], ["clientId", clientId]]) {
      const problem = visionIdProblem(value);
      if (problem) throw new AetherError("invalid_id", `${field} ${problem}`);
    }
    Object.assign(this, { groupId, clientId, token, getToken, heartbeatMs, backoffInitialMs, backoffMaxMs, maxQueue });
    this.watch = watch;
    this.apiKey = apiKey;
    this.recover = recover && !watch; // a watcher holds no position of its own
    this.url = url.replace(/\/+$/, "");
    this.state = "idle"; // idle, connecting, open, reconnecting, closed
    this.roster = [];
    this.attempt = 0;
    this.queue = [];
    this.handlers = new Map();
    this.socket = null;
    this.timers = { retry: null };
    this.positions = {}; // stream -> "epoch:offset" of the last message received
    this.proof = null; // the server's proof that these positions are this client's own
    this.recoveredUpTo = {}; // stream -> offset: messages up to it were missed, now recovered
    this.tokenWanted = !token; // a fresh token is to be asked for before the next connection
    this.tokenFresh = false; // the token came from getToken and no connection has opened with it yet
  }

  get endpoint() {
    if (this.watch) {
      const key = this.apiKey ? `?key=${encodeURIComponent(this.apiKey)}` : "";
      return `${this.url}/v3/ws/watch/group/${encodeURIComponent(this.groupId)}${key}`;
    }
    const path = `/v3/ws/group/${encodeURIComponent(this.groupId)}/client/${encodeURIComponent(this.clientId)}`;
    const query = [];
    if (this.token) query.push(`token=${encodeURIComponent(this.token)}`);
    if (this.recover) {
      const positions = Object.entries(this.positions).map(([stream, position]) => `${stream}:${position}`);
      query.push(`recover=${encodeURIComponent(positions.join(","))}`);
      if (this.proof) query.push(`proof=${encodeURIComponent(this.proof)}`);
    }
    return this.url + path + (query.length ? `?${query.join("&")}` : "");
  }

  // Handlers: "msg", "cmd", "heartbeat", "presence" (by msg_type), "message" (every frame),
  // "error" (ERROR frames, refusals, a full queue), "roster", "open", "close" (once per
  // connection that ends, close() included: { code, reason }), "state" (once per change, with
  // why: { code, reason, retryInMs }), "recovery" (after each reconnection that presented
  // positions: { recovered, streams }).
  on(type, handler) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    this.handlers.get(type)?.delete(handler);
  }

  emit(type, ...args) {
    for (const handler of this.handlers.get(type) ?? []) {
      try {
        handler(...args);
      } catch (error) {
        console.error(`aether: a "${type}" handler failed`, error);
      }
    }
  }

  setState(state, why = {}) {
    if (state === this.state) return;
    this.state = state;
    this.emit("state", state, why);
  }

  connect() {
    if (this.socket || this.state === "open" || this.fetchingToken) return this;
    clearTimeout(this.timers.retry);
    if (!this.attempt) this.setState("connecting"); // a retry is "reconnecting" already
    if (this.getToken && this.tokenWanted) {
      this.fetchingToken = true;
      Promise.resolve()
        .then(() => this.getToken())
        .then(
          (token) => {
            Object.assign(this, { token, tokenWanted: false, tokenFresh: true, fetchingToken: false });
            if (this.state !== "closed") this.open();
          },
          (error) => {
            this.fetchingToken = false;
            this.emit("error", new AetherError("token_unavailable", `aether: getToken failed: ${error}`));
            this.retry({ code: 1006, reason: "getToken failed" });
          },
        );
      return this;
    }
    this.open();
    return this;
  }

  open() {
    this.presented = Object.keys(this.positions).length > 0;
    const socket = new WebSocket(this.endpoint);
    let openedAt = null;
    let heartbeat = null;
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) return;
      openedAt = Date.now();
      this.tokenFresh = false;
      this.setState("open");
      heartbeat = setInterval(() => this.heartbeat(), this.heartbeatMs);
      for (const message of this.queue.splice(0)) socket.send(JSON.stringify(message));
      this.emit("open");
    };
    socket.onmessage = (event) => {
      if (this.socket === socket) this.receive(event.data);
    };
    socket.onclose = (event) => {
      clearInterval(heartbeat);
      if (this.socket !== socket) return; // replaced or closed by close(): nothing more to do
      this.socket = null;
      const ended = { code: event.code, reason: event.reason };
      this.emit("close", ended);
      if (this.state === "closed") return;
      if (event.code >= FINAL_CLOSE.from && event.code <= FINAL_CLOSE.to) {
        this.stop({ code: "disconnected", msg: `closed for good by the server: ${event.code} ${event.reason}`.trim() }, ended);
        return;
      }
      if (event.code === TOKEN_EXPIRED && this.getToken) {
        this.tokenWanted = true; // a fresh token, and back at once: recovery fills the gap
        this.attempt = 0;
        this.retry(ended, 0);
        return;
      }
      // Backoff starts again only after a connection that lasted: a flapping one keeps growing it.
      if (openedAt !== null && Date.now() - openedAt > this.backoffMaxMs) this.attempt = 0;
      if (openedAt !== null) this.retry(ended);
      else
        this.diagnose().then((refusal) => {
          if (this.state === "closed" || this.socket) return;
          if (refusal?.code === "unauthorized" && this.getToken && !this.tokenFresh) {
            this.tokenWanted = true; // the token is stale: one fresh one is worth a try
            this.retry(ended);
          } else if (refusal) this.stop(refusal);
          else this.retry(ended);
        });
    };
  }

  // A browser hides why a handshake failed; the same path over plain HTTP tells (same origin
  // only). The token goes in a header there, so no log that keeps URLs sees it a second time.
  async diagnose() {
    try {
      const url = this.endpoint.replace(/^ws/, "http").replace(/\?.*$/, "");
      const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
      const response = await fetch(url, { headers });
      const body = await response.json();
      return FINAL_REFUSALS.has(body.code) ? body : null;
    } catch {
      return null;
    }
  }

  stop(refusal, ended = {}) {
    this.setState("closed", { ...ended, reason: `${refusal.code}: ${refusal.msg}`, final: true });
    this.queue.length = 0;
    this.clearRoster();
    this.emit("error", new AetherError(refusal.code, refusal.msg));
  }

  // Connects again after retryInMs: by default, capped exponential backoff with full jitter.
  retry(ended, retryInMs = this.backoffMs()) {
    if (this.state === "closed") return;
    this.attempt += 1;
    this.setState("reconnecting", { ...ended, retryInMs, attempt: this.attempt });
    this.timers.retry = setTimeout(() => this.connect(), retryInMs);
  }

  // While reconnecting: try now instead of waiting out the backoff.
  retryNow() {
    if (this.state === "reconnecting" && !this.socket) this.connect();
  }

  backoffMs() {
    return Math.round(Math.random() * Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** this.attempt));
  }

  // Closes for good: "close" fires once (if a connection was open or opening), then the
  // roster empties. Messages still queued are dropped.
  close() {
    if (this.state === "closed") return;
    const ended = { code: 1000, reason: "client closed" };
    this.setState("closed", ended);
    clearTimeout(this.timers.retry);
    this.queue.length = 0;
    this.attempt = 0; // connect() may start again
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.close(ended.code, ended.reason);
      this.emit("close", ended);
    }
    this.clearRoster();
  }

  clearRoster() {
    if (!this.roster.length) return;
    this.roster = [];
    this.emit("roster", this.roster);
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (typeof message.position === "string" && !this.advance(message)) return;
    this.emit("message", message);
    // An error comes from the server itself (from_id null); a peer's "ERROR" command is a command.
    if (message.msg_type === "cmd" && message.cmd === "ERROR" && message.from_id === null) {
      const { code, errors } = message.payload ?? {};
      this.emit("error", new AetherError(code, message.msg, errors ?? []), message);
      return;
    }
    if (message.msg_type === "presence") this.track(message.payload ?? {});
    this.emit(message.msg_type, message);
  }

  // Keeps a recorded message's position; false for one to skip. One after a gap (a message
  // lost between the server's processes) or from another epoch means some were missed:
  // reconnecting recovers them, or reports that it could not.
  advance(message) {
    const stream = STREAM_OF_TARGET[message.target];
    const [epoch, offset] = splitPosition(message.position);
    const last = this.positions[stream];
    if (last !== undefined) {
      const [lastEpoch, lastOffset] = splitPosition(last);
      if (epoch === lastEpoch && offset <= lastOffset) return false; // had it already
      if (epoch !== lastEpoch || offset !== lastOffset + 1) {
        this.socket?.close(4000, "recovering missed messages");
        return false;
      }
    }
    this.positions[stream] = message.position;
    if (offset <= (this.recoveredUpTo[stream] ?? 0)) message.recovered = true;
    return true;
  }

  // The snapshot's recovery report: streams not recovered start again from where they are.
  takeRecovery(report, presented) {
    this.recoveredUpTo = {};
    this.proof = report.proof ?? null;
    for (const [stream, state] of Object.entries(report.streams ?? {})) {
      if (state.recovered) {
        if (state.position) this.recoveredUpTo[stream] = splitPosition(state.position)[1];
        continue;
      }
      if (state.position) this.positions[stream] = state.position;
      else delete this.positions[stream];
    }
    if (presented) this.emit("recovery", { recovered: report.recovered, streams: report.streams });
  }

  track(event) {
    let clients = this.roster;
    if (event.event === "snapshot" && event.recovery) this.takeRecovery(event.recovery, this.presented);
    if (event.event === "snapshot") clients = [...event.clients];
    else if (event.event === "join" && !clients.includes(event.client_id)) clients = [...clients, event.client_id];
    else if (event.event === "leave") clients = clients.filter((id) => id !== event.client_id);
    else return;
    this.roster = clients.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
    this.emit("roster", this.roster);
  }

  // Sends any WS_Message_V3; queued while (re)connecting, up to maxQueue, then an error.
  send(message) {
    if (this.state === "closed") throw new AetherError("closed", "aether: the client is closed");
    if (this.state === "open" && this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
      return;
    }
    if (this.queue.length >= this.maxQueue) {
      const error = new AetherError("queue_full", `aether: ${this.maxQueue} messages already wait for the connection`);
      this.emit("error", error);
      throw error;
    }
    this.queue.push(message);
  }

  sendGroup(msg, payload) {
    this.send(compact({ msg_type: "msg", target: "group", msg, payload }));
  }

  sendDirect(toId, msg, payload) {
    this.send(compact({ msg_type: "msg", target: "direct", to_id: toId, msg, payload }));
  }

  broadcast(msg, payload) {
    this.send(compact({ msg_type: "msg", target: "broadcast", msg, payload }));
  }

  echo(msg, payload) {
    this.send(compact({ msg_type: "msg", target: "echo", msg, payload }));
  }

  command(cmd, { target = "group", toId, msg, payload } = {}) {
    this.send(compact({ msg_type: "cmd", target, to_id: toId, cmd, msg, payload }));
  }

  heartbeat() {
    if (this.state === "open") this.send({ msg_type: "heartbeat", target: "echo", payload: { t: Date.now() } });
  }

  queryPresence() {
    this.send({ msg_type: "presence", target: "echo" });
  }
}

function splitPosition(position) {
  const colon = position.lastIndexOf(":");
  return [position.slice(0, colon), Number(position.slice(colon + 1))];
}

function compact(message) {
  return Object.fromEntries(Object.entries(message).filter(([, value]) => value !== undefined && value !== null));
}
