// Drives a Durable Task sidecar with the official JavaScript SDK: a sequence, a fan-out,
// an external event and a terminate. Usage: node smoke.js HOST:PORT. Prints one JSON line
// of results and exits 0 when every check passed.
const {
  TaskHubGrpcClient, TaskHubGrpcWorker, OrchestrationStatus, whenAll, ConsoleLogger, NoOpLogger,
} = require("@microsoft/durabletask-js");

const address = process.argv[2];

const hello = async (_ctx, city) => `Hello, ${city}!`;
const square = async (_ctx, n) => n * n;

const sequence = async function* (ctx) {
  const out = [];
  for (const city of ["Tokyo", "London", "Seattle"]) out.push(yield ctx.callActivity(hello, city));
  return out;
};
const fanOut = async function* (ctx, n) {
  const tasks = [];
  for (let i = 0; i < n; i++) tasks.push(ctx.callActivity(square, i));
  const results = yield whenAll(tasks);
  return results.reduce((a, b) => a + b, 0);
};
const approval = async function* (ctx) {
  const answer = yield ctx.waitForExternalEvent("approval");
  return `approved by ${answer.by}`;
};
const forever = async function* (ctx) {
  yield ctx.createTimer(3600);
  return "woke up";
};

async function main() {
  const logger = process.env.DTRIO_JS_VERBOSE ? new ConsoleLogger() : new NoOpLogger();
  const worker = new TaskHubGrpcWorker({ hostAddress: address, logger });
  for (const o of [sequence, fanOut, approval, forever]) worker.addOrchestrator(o);
  for (const a of [hello, square]) worker.addActivity(a);
  const client = new TaskHubGrpcClient({ hostAddress: address, logger });
  await worker.start();
  const results = {};
  try {
    const seqId = await client.scheduleNewOrchestration(sequence);
    const seq = await client.waitForOrchestrationCompletion(seqId, true, 30);
    results.sequence = { status: OrchestrationStatus[seq.runtimeStatus], output: JSON.parse(seq.serializedOutput) };

    const fanId = await client.scheduleNewOrchestration(fanOut, 20);
    const fan = await client.waitForOrchestrationCompletion(fanId, true, 30);
    results.fanOut = { status: OrchestrationStatus[fan.runtimeStatus], output: JSON.parse(fan.serializedOutput) };

    const evId = await client.scheduleNewOrchestration(approval);
    await client.waitForOrchestrationStart(evId, false, 30);
    await client.raiseOrchestrationEvent(evId, "approval", { by: "ana" });
    const ev = await client.waitForOrchestrationCompletion(evId, true, 30);
    results.event = { status: OrchestrationStatus[ev.runtimeStatus], output: JSON.parse(ev.serializedOutput) };

    const tId = await client.scheduleNewOrchestration(forever);
    await client.waitForOrchestrationStart(tId, false, 30);
    await client.terminateOrchestration(tId, "stopped by test");
    const t = await client.waitForOrchestrationCompletion(tId, true, 30);
    results.terminate = { status: OrchestrationStatus[t.runtimeStatus], output: JSON.parse(t.serializedOutput) };
  } finally {
    await worker.stop();
    await client.stop();
  }
  console.log(JSON.stringify(results));
  const ok =
    results.sequence.status === "COMPLETED" &&
    results.fanOut.output === 2470 &&
    results.event.output === "approved by ana" &&
    results.terminate.status === "TERMINATED";
  process.exit(ok ? 0 : 1);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
