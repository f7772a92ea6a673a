// A PDU check worker (see pdu-checks.ts): verifies the chunks of well-formed PDUs it is sent, with
// the keys sent along, and answers each with its results in order. A chunk that throws is answered
// with the error, and the caller checks it inline.
import { parentPort } from "node:worker_threads";
import { type WorkerAnswer, type WorkerTask, verifyValidatedPdus } from "./pdu-checks.ts";

const port = parentPort;
if (!port) throw new Error("pdu-checks-worker.ts runs in a worker thread");
port.on("message", ({ id, roomVersion, pdus, keys }: WorkerTask) => {
  let answer: WorkerAnswer;
  try {
    answer = { id, results: verifyValidatedPdus(roomVersion, pdus, keys) };
  } catch (err) {
    answer = { id, error: String(err) };
  }
  port.postMessage(answer);
});
