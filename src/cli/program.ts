import { Command, type OutputConfiguration } from 'commander';
import { registerEvalCommand } from './commands/eval.ts';
import { registerKafkaCommands } from './commands/kafka.ts';
import { registerMetricsCommands } from './commands/metrics.ts';
import { registerRunCommand } from './commands/run.ts';

/**
 * The `rxrl` command line with every command. `output` and `exitOverride` (for tests: Commander's
 * settings reach a subcommand only when set before it is added) are applied first.
 */
export function createProgram(
  options: { output?: OutputConfiguration; exitOverride?: boolean } = {},
): Command {
  const program = new Command('rxrl')
    .description('Reactive stream-processing RL for language models, the DeepSeek-R1 way (GRPO).')
    .version('0.1.0');
  if (options.exitOverride) program.exitOverride();
  program.configureOutput({
    ...options.output,
    // Commander's own usage errors start with "error: "; the commands' own (command.error) do too.
    outputError: (text, write) => write(text.startsWith('error: ') ? text : `error: ${text}`),
  });
  registerRunCommand(program);
  registerEvalCommand(program);
  registerKafkaCommands(program);
  registerMetricsCommands(program);
  return program;
}
