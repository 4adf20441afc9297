// What a frontend written in strict TypeScript does with the client: every line must compile.
import { AetherClient, AetherError, type PresenceMessage, type WSMessageV3 } from "../../aether_tornado/static/aether-v3.js";

const client = new AetherClient({
  groupId: "g_demo",
  clientId: "c_demo",
  url: "wss://chat.example.com",
  token: null,
  maxQueue: 50,
  heartbeatMs: 30_000,
  backoffInitialMs: 500,
  backoffMaxMs: 30_000,
  recover: true,
});

// The server sends all ten keys: no optional chaining needed.
client.on("message", (message: WSMessageV3) => {
  const time: string = message.sent_at.slice(11, 23);
  const from: string | null = message.from_id;
  console.log(time, from, message.version, message.position ?? "not recorded");
});

client.on("presence", (message: PresenceMessage) => {
  const payload = message.payload;
  if (payload.event === "snapshot") console.log(payload.clients.join(", "), payload.recovery?.recovered);
  else if (payload.event === "leave") console.log(payload.client_id, payload.reason === "timeout");
  else console.log(payload.client_id, "joined");
});

client.on("state", (state, why) => {
  if (state === "reconnecting") console.log(`closed ${why.code} ${why.reason}, try ${why.attempt} in ${why.retryInMs} ms`);
  if (state === "closed" && why.final) console.log("stopped for good");
});
client.on("close", ({ code, reason }) => console.log(code, reason));
client.on("error", (error: AetherError) => console.log(error.code, error.errors.map((item) => item.field)));
client.on("recovery", (report) => console.log(report.streams.group.position));

client.connect();
client.send({ msg_type: "cmd", target: "direct", to_id: "c_bob", cmd: "RELOAD_UI" });
client.command("RELOAD_UI", { target: "group", payload: { page: "home" } });
const off = client.on("roster", (clients: string[]) => console.log(clients.length));
off();
client.close();

// An operator's tool watches a group without joining it.
const watcher = new AetherClient({ groupId: "g_demo", watch: true, apiKey: "read-only-key-of-16" });
watcher.on("presence", (message: PresenceMessage) => console.log(message.payload.event));
watcher.connect();
watcher.retryNow();
