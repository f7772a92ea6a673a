// A PDU check worker (see pdu-checks.ts): checks the format of the chunks it is sent and keeps
// their valid PDUs, then verifies them with the keys sent along, answering each request in turn.
// A request that throws is answered with the error, and the caller checks that chunk inline.
import { parentPort } from "node:worker_threads";
import type { Pdu } from "../protocol/pdu.ts";
import { type WorkerAnswer, type WorkerRequest, checkFormats, verifyValidatedPdus } from "./pdu-checks.ts";

const port = parentPort;
if (!port) throw new Error("pdu-checks-worker.ts runs in a worker thread");
/**
 * The valid PDUs of the chunks whose formats were checked, until they are verified. Bounded, in
 * case a caller never comes back for one: the oldest is forgotten (its verify request then fails,
 * and the caller checks it inline).
 */
const kept = new Map<number, { roomVersion: string; pdus: Pdu[] }>();
const MAX_KEPT = 256;

port.on("message", (request: WorkerRequest) => {
  let answer: WorkerAnswer;
  try {
    if (request.kind === "formats") {
      const { formats, valid } = checkFormats(request.roomVersion, JSON.parse(request.json) as unknown[]);
      if (valid.length > 0) kept.set(request.chunk, { roomVersion: request.roomVersion, pdus: valid });
      if (kept.size > MAX_KEPT) kept.delete(kept.keys().next().value!);
      answer = { id: request.id, formats };
    } else {
      const chunk = kept.get(request.chunk);
      kept.delete(request.chunk);
      if (!chunk) throw new Error(`no PDUs kept for chunk ${request.chunk}`);
      answer = { id: request.id, verified: verifyValidatedPdus(chunk.roomVersion, chunk.pdus, request.keys) };
    }
  } catch (err) {
    answer = { id: request.id, error: String(err) };
  }
  port.postMessage(answer);
});
