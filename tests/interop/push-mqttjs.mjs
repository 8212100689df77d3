// push-mqttjs.mjs - MQTT.js (npm "mqtt", pinned in package.json/package-lock.json), a client
// nobody here wrote, as a mica-push device: it connects over TLS (verifying the broker against
// --ca), CONNECT with client id = regid, user name = regid and password = the token (read from
// the mica-device state file, never from the command line), subscribes d/<regid> at QoS 1 and
// prints each PUBLISH payload in base64 on its own line (MQTT.js acknowledges QoS 1 itself).
//
//   node push-mqttjs.mjs --state FILE --host HOST --port PORT --ca FILE [--count N] [--timeout S]
//
// stderr gets "subscribed granted=Q" once the SUBACK arrived. Exit 0 after N messages (default
// 1); 1 on a refused CONNECT or SUBSCRIBE, a TLS or connection error, or the timeout (default
// 30 s); 64 on usage errors.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';

let args;
try {
  args = parseArgs({
    options: {
      state: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      ca: { type: 'string' },
      count: { type: 'string', default: '1' },
      timeout: { type: 'string', default: '30' },
    },
    strict: true,
  }).values;
} catch (e) {
  console.error(`push-mqttjs: ${e.message}`);
  process.exit(64);
}
for (const k of ['state', 'host', 'port', 'ca']) {
  if (!args[k]) {
    console.error(`push-mqttjs: --${k} is required`);
    process.exit(64);
  }
}
const want = Number(args.count);
const state = JSON.parse(readFileSync(args.state, 'utf8'));
const topic = `d/${state.regid}`;
let got = 0;

const client = mqtt.connect({
  protocol: 'mqtts',
  host: args.host,
  port: Number(args.port),
  ca: readFileSync(args.ca),
  rejectUnauthorized: true,
  protocolVersion: 4,
  clientId: state.regid,
  username: state.regid,
  password: state.token,
  clean: true,
  keepalive: 30,
  reconnectPeriod: 0,
});

const die = (msg) => {
  console.error(`push-mqttjs: ${msg}`);
  client.end(true);
  process.exit(1);
};
setTimeout(() => die(`timed out with ${got} of ${want} messages`), Number(args.timeout) * 1000).unref();

client.on('connect', () => {
  client.subscribe(topic, { qos: 1 }, (err, granted) => {
    if (err) return die(`subscribe: ${err.message}`);
    if (!granted.length || granted[0].qos === 128) return die('subscription refused (SUBACK 0x80)');
    console.error(`subscribed granted=${granted[0].qos}`);
  });
});
// MQTT.js sends the PUBACK after emitting 'message', and emits 'packetsend' just before it
// writes a packet: end on the next turn after the last PUBACK, so it leaves before DISCONNECT.
client.on('message', (t, payload) => {
  if (t !== topic) return die(`message on another topic ${t}`);
  console.log(payload.toString('base64'));
  got++;
});
client.on('packetsend', (packet) => {
  if (packet.cmd === 'puback' && got >= want) setImmediate(() => client.end(false, () => process.exit(0)));
});
client.on('error', (err) => die(`${err.code ?? ''} ${err.message}`));
client.on('close', () => {
  if (got < want) die('the broker closed the connection');
});
