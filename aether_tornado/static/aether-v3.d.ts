// Type declarations for aether-v3.js, the browser client of the Aether V3 WebSocket protocol.

export type MsgType = "msg" | "cmd" | "heartbeat" | "presence";
export type Target = "direct" | "group" | "broadcast" | "echo";
export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A message to send: the server fills in what is left out (from_id, group_id, sent_at). */
export interface OutgoingMessage {
  version?: "3";
  msg_type: MsgType;
  target: Target;
  from_id?: string | null;
  to_id?: string | null;
  group_id?: string | null;
  cmd?: string | null;
  msg?: string | null;
  payload?: Record<string, unknown> | null;
  sent_at?: string | null;
}

/** A message from the server: always all ten keys, null where there is no value. */
export interface WSMessageV3 {
  version: "3";
  msg_type: MsgType;
  target: Target;
  from_id: string | null;
  to_id: string | null;
  group_id: string | null;
  cmd: string | null;
  msg: string | null;
  payload: Record<string, unknown> | null;
  /** ISO 8601 UTC with milliseconds, stamped by the server. */
  sent_at: string;
  /** "epoch:offset" of a group, direct or broadcast message, for clients that recover. */
  position?: string;
  /** Set by this client (never sent by the server) on a message missed while away and recovered. */
  recovered?: true;
}

/** The payload of a presence message. */
export type PresencePayload =
  | { event: "snapshot"; clients: string[]; recovery?: RecoveryReport }
  | { event: "join"; client_id: string }
  | { event: "leave"; client_id: string; reason: "closed" | "timeout" };

/** A presence message: a snapshot to this client, or a join or leave in its group. */
export interface PresenceMessage extends WSMessageV3 {
  msg_type: "presence";
  payload: PresencePayload;
}

/** The payload of an ERROR command from the server. */
export interface ErrorPayload {
  code: string;
  errors: ProblemField[];
}

/** Why the state changed: the close code and reason of the connection that ended, and when
 * the next attempt comes. */
export interface StateChange {
  code?: number;
  reason?: string;
  retryInMs?: number;
  /** Which retry is coming, from 1, while reconnecting. */
  attempt?: number;
  /** Set when the client stopped for good: a refusal no retry can fix, or a final close code
   * (4400 to 4499, an operator's ban among them). */
  final?: boolean;
}

export type Stream = "group" | "client" | "broadcast";

/** The snapshot's recovery report, as the "recovery" event passes it. */
export interface RecoveryReport {
  /** Every stream's missed messages follow, in order; if false, reload what the page shows. */
  recovered: boolean;
  streams: Record<Stream, { position: string | null; recovered: boolean }>;
  /** Signed by the server: these positions are this client's own. Presented with them (?proof=). */
  proof: string | null;
}

export interface ProblemField {
  field: string;
  problem: string;
}

export class AetherError extends Error {
  constructor(code: string, message: string, errors?: ProblemField[]);
  code: string;
  errors: ProblemField[];
}

export interface AetherClientOptions {
  groupId: string;
  /** Required, unless `watch`. */
  clientId?: string;
  /** A token for servers that require one (sent as ?token=). */
  token?: string | null;
  /**
   * Returns a fresh token from your application. Called before connecting without a token,
   * after the server closed the connection because the token expired (close code 3000), and
   * once after a handshake refused as unauthorized; the client then reconnects and recovers.
   */
  getToken?: () => Promise<string>;
  /** ws:// or wss:// base URL; defaults to the page's own host. */
  url?: string;
  heartbeatMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Messages kept while reconnecting; one more is an AetherError "queue_full". */
  maxQueue?: number;
  /** Recover what was missed while reconnecting (default true; never for a watcher). */
  recover?: boolean;
  /**
   * Watch the group without joining it (an operator's tool): its traffic and presence, in no
   * roster; only heartbeats and presence queries may be sent. Needs `apiKey` when the server
   * has an API key. `clientId` is then ignored.
   */
  watch?: boolean;
  /** The API key or the read-only key, for `watch` (sent as ?key=). */
  apiKey?: string | null;
}

export interface Handlers {
  msg: (message: WSMessageV3) => void;
  cmd: (message: WSMessageV3) => void;
  heartbeat: (message: WSMessageV3) => void;
  presence: (message: PresenceMessage) => void;
  message: (message: WSMessageV3) => void;
  error: (error: AetherError, message?: WSMessageV3) => void;
  /** The present client_ids, sorted; emptied when the client is closed. */
  roster: (clients: string[]) => void;
  open: () => void;
  /** Once per connection that ends, close() included. */
  close: (event: { code: number; reason: string }) => void;
  /** Once per change of state. */
  state: (state: State, why: StateChange) => void;
  /** After each reconnection that presented positions. */
  recovery: (report: RecoveryReport) => void;
}

export class AetherClient {
  constructor(options: AetherClientOptions);
  readonly groupId: string;
  readonly clientId: string;
  readonly state: State;
  /** Present client_ids of the group, sorted in code point order. */
  readonly roster: string[];
  readonly endpoint: string;
  /** The last position received per stream, presented on reconnecting. */
  readonly positions: Partial<Record<Stream, string>>;
  connect(): this;
  /** While reconnecting, tries at once instead of waiting out the backoff. */
  retryNow(): void;
  /** Closes for good: "close" fires once, queued messages are dropped, the roster empties. */
  close(): void;
  on<K extends keyof Handlers>(type: K, handler: Handlers[K]): () => void;
  off<K extends keyof Handlers>(type: K, handler: Handlers[K]): void;
  send(message: OutgoingMessage): void;
  sendGroup(msg?: string, payload?: Record<string, unknown>): void;
  sendDirect(toId: string, msg?: string, payload?: Record<string, unknown>): void;
  broadcast(msg?: string, payload?: Record<string, unknown>): void;
  echo(msg?: string, payload?: Record<string, unknown>): void;
  command(
    cmd: string,
    options?: { target?: Target; toId?: string; msg?: string; payload?: Record<string, unknown> },
  ): void;
  heartbeat(): void;
  queryPresence(): void;
}
