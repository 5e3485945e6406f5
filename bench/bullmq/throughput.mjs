// BullMQ side of the sandwarden peer benchmark (bench/peer.sh): N no-op jobs added by 64
// concurrent producers (each awaits its add; with Redis on `appendfsync always` an acknowledged
// add is fsynced, like sandwarden's submit), processed by one Worker with concurrency C, timed
// from the first add to the last completion. Completed jobs are kept (removeOnComplete: false),
// as sandwarden keeps its ended jobs.
//
// node throughput.mjs [JOBS] [WORKERS]   (defaults 20000, 8; Redis at 127.0.0.1:$REDIS_PORT)
// Prints `bullmq: N jobs, C workers, X jobs/s` and a latency line (processedOn - timestamp).
import { Queue, Worker } from 'bullmq';

const PRODUCERS = 64;
const jobs = Number(process.argv[2]) > 0 ? Number(process.argv[2]) : 20000;
const workers = Number(process.argv[3]) > 0 ? Number(process.argv[3]) : 8;
const connection = { host: '127.0.0.1', port: Number(process.env.REDIS_PORT || 6379) };
const name = `bench-${process.pid}-${Date.now()}`;

const queue = new Queue(name, { connection });
const latencies = [];
let ended = 0;
let failed = 0;
let resolveDone;
const done = new Promise((r) => { resolveDone = r; });
const onEnd = (job) => {
  if (job && job.processedOn && job.timestamp) latencies.push(job.processedOn - job.timestamp);
  ended += 1;
  if (ended === jobs) resolveDone(performance.now());
};
const worker = new Worker(name, async () => {}, { connection, concurrency: workers, autorun: true });
worker.on('completed', onEnd);
worker.on('failed', (job) => { failed += 1; onEnd(job); });
worker.on('error', (e) => console.error('bullmq worker error:', e.message));
await queue.waitUntilReady();
await worker.waitUntilReady();

let next = 0;
const opts = { removeOnComplete: false, removeOnFail: false };
const started = performance.now();
await Promise.all(
  Array.from({ length: PRODUCERS }, async () => {
    while (next++ < jobs) await queue.add('noop', {}, opts);
  }),
);
const submitted = performance.now() - started;
const finished = await done;
const elapsed = (finished - started) / 1000;

latencies.sort((a, b) => a - b);
const pct = (p) => latencies.length ? latencies[Math.min(latencies.length, Math.max(1, Math.ceil((p / 100) * latencies.length))) - 1] : 0;
const completed = await queue.getCompletedCount();
console.log(`bullmq: ${jobs} jobs, ${workers} workers, ${(jobs / elapsed).toFixed(0)} jobs/s`);
console.log(
  `bullmq: submit-to-start p50 ${pct(50)} ms, p99 ${pct(99)} ms; completed ${completed}/${jobs} (failed ${failed}); ` +
  `all adds acknowledged after ${(submitted / 1000).toFixed(2)} s, all done after ${elapsed.toFixed(2)} s`,
);
await worker.close();
await queue.close();
