// A PDU check worker (see pdu-checks.ts): steps 1–3 for each chunk it is sent (or step 1 only),
// with the keys sent along, answered in turn. A chunk that throws is answered with the error, and the caller checks
// it inline.
import { parentPort } from "node:worker_threads";
import { type WorkerAnswer, type WorkerRequest, checkFormats, verifyValidatedPdus } from "./pdu-checks.ts";

const port = parentPort;
if (!port) throw new Error("pdu-checks-worker.ts runs in a worker thread");

port.on("message", ({ id, roomVersion, json, keys, verify }: WorkerRequest) => {
  let answer: WorkerAnswer;
  try {
    const { formats, valid } = checkFormats(roomVersion, JSON.parse(json) as unknown[]);
    answer = { id, formats, verified: verify ? verifyValidatedPdus(roomVersion, valid, keys) : [] };
  } catch (err) {
    answer = { id, error: String(err) };
  }
  port.postMessage(answer);
});
// Loaded and listening: the pool sends work from now on.
port.postMessage({ ready: true });
