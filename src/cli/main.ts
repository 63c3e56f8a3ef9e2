import { Command } from 'commander';
import { registerEvalCommand } from './commands/eval.ts';
import { registerKafkaCommands } from './commands/kafka.ts';
import { registerMetricsCommands } from './commands/metrics.ts';
import { registerRunCommand } from './commands/run.ts';

const program = new Command();
program
  .name('rxrl')
  .description('Reactive stream-processing RL for language models, the DeepSeek-R1 way (GRPO).')
  .version('0.1.0');
registerRunCommand(program);
registerEvalCommand(program);
registerKafkaCommands(program);
registerMetricsCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  // Print the message and leave: tfjs-backend-wasm installs an uncaughtException handler that
  // would rethrow with a page of minified source.
  console.error(`rxrl: ${(err as Error).message}`);
  process.exit(1);
}
