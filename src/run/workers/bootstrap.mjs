// Entry of every worker thread: load tsx's loader, then the TypeScript module named in workerData.
// (Worker execArgv does not carry --import hooks into the thread on Node 20.)
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.module);
