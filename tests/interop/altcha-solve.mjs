#!/usr/bin/env node
// altcha-solve.mjs - the off-the-shelf side of tests/integration/test_altcha_interop.sh. It
// uses the real altcha-lib (version pinned in package.json) through its classic "v1" API, the
// format mica's account service speaks.
//
//   node altcha-solve.mjs [--verify-key KEY_FILE] < challenge.json
//       Solves the challenge with altcha-lib's solveChallenge() and prints the base64 payload
//       exactly as the ALTCHA widget builds it (btoa(JSON.stringify({algorithm, challenge,
//       number, salt, signature, test, took})); altcha-lib has no payload builder of its own).
//       With --verify-key, altcha-lib's verifySolution() must also accept the payload under
//       the key in KEY_FILE (its bytes, read as UTF-8 text as altcha-lib takes keys).
//   node altcha-solve.mjs --create KEY_FILE MAXNUMBER TTL_SECONDS
//       Prints a challenge made by altcha-lib's createChallenge(), expiring in TTL_SECONDS.
//
// Exit status: 0 done, 1 no solution found, 2 usage or input error, 3 verifySolution refused.
import { readFileSync } from 'node:fs';
import { createChallenge, solveChallenge, verifySolution } from 'altcha-lib/v1';

function fail(code, message) {
  process.stderr.write(`altcha-solve: ${message}\n`);
  process.exit(code);
}

function readKey(path) {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    return fail(2, `${path}: ${err.message}`);
  }
}

// The widget's createAltchaPayload(): undefined members vanish in JSON.stringify.
function widgetPayload(challenge, solution) {
  return btoa(
    JSON.stringify({
      algorithm: challenge.algorithm,
      challenge: challenge.challenge,
      number: solution.number,
      salt: challenge.salt,
      signature: challenge.signature,
      test: undefined,
      took: solution.took,
    })
  );
}

async function create(args) {
  if (args.length !== 3) fail(2, 'usage: --create KEY_FILE MAXNUMBER TTL_SECONDS');
  const [keyFile, max, ttl] = args;
  const maxnumber = Number.parseInt(max, 10);
  const seconds = Number.parseInt(ttl, 10);
  if (!(maxnumber > 0) || !(seconds > 0)) fail(2, 'MAXNUMBER and TTL_SECONDS must be positive');
  const challenge = await createChallenge({
    hmacKey: readKey(keyFile),
    maxnumber,
    expires: new Date(Date.now() + seconds * 1000),
  });
  process.stdout.write(JSON.stringify(challenge) + '\n');
}

async function solve(args) {
  let keyFile = null;
  if (args.length === 2 && args[0] === '--verify-key') keyFile = args[1];
  else if (args.length !== 0) fail(2, 'usage: [--verify-key KEY_FILE] < challenge.json');

  let challenge;
  try {
    challenge = JSON.parse(readFileSync(0, 'utf8'));
  } catch (err) {
    fail(2, `challenge on stdin is not JSON: ${err.message}`);
  }
  for (const name of ['algorithm', 'challenge', 'salt', 'signature']) {
    if (typeof challenge[name] !== 'string') fail(2, `challenge lacks "${name}"`);
  }
  // The widget searches up to the challenge's maxnumber (default 1e6).
  const max = Number.isInteger(challenge.maxnumber) ? challenge.maxnumber : 1e6;
  const { promise } = solveChallenge(challenge.challenge, challenge.salt, challenge.algorithm, max);
  const solution = await promise;
  if (!solution) fail(1, `no solution in [0, ${max}]`);
  process.stderr.write(`altcha-solve: number ${solution.number} in ${solution.took} ms\n`);

  const payload = widgetPayload(challenge, solution);
  if (keyFile !== null && !(await verifySolution(payload, readKey(keyFile), true))) {
    fail(3, 'altcha-lib verifySolution() refused the payload');
  }
  process.stdout.write(payload + '\n');
}

const args = process.argv.slice(2);
await (args[0] === '--create' ? create(args.slice(1)) : solve(args));
