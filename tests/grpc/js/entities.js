// Drives a Durable Task sidecar's entities with the official JavaScript SDK: a class entity
// signalled by the client, called (and locked) by an orchestration, then read back with get and
// query. Usage: node entities.js HOST:PORT. Prints one JSON line of results; exits 0 when every
// check passed.
const {
  TaskHubGrpcClient, TaskHubGrpcWorker, OrchestrationStatus, EntityInstanceId, TaskEntity,
  ConsoleLogger, NoOpLogger,
} = require("@microsoft/durabletask-js");

const address = process.argv[2];

class Counter extends TaskEntity {
  add(amount) { this.state += amount; return this.state; }
  get() { return this.state; }
  initializeState() { return 0; }
}

const lockedIncrement = async function* (ctx, key) {
  const id = new EntityInstanceId("counter", key);
  const lock = yield ctx.entities.lockEntities(id);
  try {
    const before = yield ctx.entities.callEntity(id, "get");
    return yield ctx.entities.callEntity(id, "add", before);
  } finally {
    lock.release();
  }
};

async function main() {
  const logger = process.env.DTRIO_JS_VERBOSE ? new ConsoleLogger() : new NoOpLogger();
  const worker = new TaskHubGrpcWorker({ hostAddress: address, logger });
  worker.addOrchestrator(lockedIncrement);
  worker.addNamedEntity("counter", () => new Counter());
  const client = new TaskHubGrpcClient({ hostAddress: address, logger });
  await worker.start();
  const results = {};
  try {
    const id = new EntityInstanceId("counter", "js");
    for (const n of [1, 2, 3]) await client.signalEntity(id, "add", n);
    const iid = await client.scheduleNewOrchestration(lockedIncrement, "js");
    const done = await client.waitForOrchestrationCompletion(iid, true, 30);
    results.orchestration = {
      status: OrchestrationStatus[done.runtimeStatus], output: JSON.parse(done.serializedOutput),
    };
    const meta = await client.getEntity(id, true);
    results.entity = { id: meta.id.toString(), state: meta.state, locked: meta.lockedBy ?? null };
    results.missing = (await client.getEntity(new EntityInstanceId("counter", "none"))) ?? null;
    const found = [];
    for await (const entity of client.getEntities({ instanceIdStartsWith: "@counter@" })) {
      found.push(entity.id.toString());
    }
    results.query = found;
  } finally {
    await worker.stop();
    await client.stop();
  }
  console.log(JSON.stringify(results));
  const ok = results.orchestration.output === 12 && results.entity.state === 12;
  process.exit(ok ? 0 : 1);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
