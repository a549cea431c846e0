// Drives a dtrio sidecar that requires TLS and a token with the official JavaScript SDK: a
// worker and a client sending the token as per-call metadata run a sequence, and a client
// without it is refused. Usage: node secure.js HOST:PORT, with the token in DTRIO_TEST_TOKEN and
// the test CA in GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (which grpc-js reads for its TLS roots).
// Prints one JSON line of results and exits 0 when every check passed.
const grpc = require("@grpc/grpc-js");
const {
  TaskHubGrpcClient, TaskHubGrpcWorker, OrchestrationStatus, NoOpLogger,
} = require("@microsoft/durabletask-js");

const address = process.argv[2];
const token = process.env.DTRIO_TEST_TOKEN;

const hello = async (_ctx, city) => `Hello, ${city}!`;
const sequence = async function* (ctx) {
  const out = [];
  for (const city of ["Tokyo", "London"]) out.push(yield ctx.callActivity(hello, city));
  return out;
};

function withToken() {
  return async () => {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${token}`);
    return metadata;
  };
}

async function main() {
  const logger = new NoOpLogger();
  const common = { hostAddress: address, useTLS: true, logger };
  const worker = new TaskHubGrpcWorker({ ...common, metadataGenerator: withToken() });
  worker.addOrchestrator(sequence);
  worker.addActivity(hello);
  const client = new TaskHubGrpcClient({ ...common, metadataGenerator: withToken() });
  const stranger = new TaskHubGrpcClient(common);
  await worker.start();
  const results = {};
  try {
    const id = await client.scheduleNewOrchestration(sequence);
    const done = await client.waitForOrchestrationCompletion(id, true, 30);
    results.sequence = {
      status: OrchestrationStatus[done.runtimeStatus], output: JSON.parse(done.serializedOutput),
    };
    try {
      await stranger.scheduleNewOrchestration(sequence);
      results.stranger = "served";
    } catch (err) {
      results.stranger = err.code === grpc.status.UNAUTHENTICATED ? "UNAUTHENTICATED" : String(err);
    }
  } finally {
    await worker.stop();
    await client.stop();
    await stranger.stop();
  }
  console.log(JSON.stringify(results));
  const ok = results.sequence.status === "COMPLETED" && results.stranger === "UNAUTHENTICATED";
  process.exit(ok ? 0 : 1);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
