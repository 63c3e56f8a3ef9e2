import { Command } from 'commander';

const program = new Command();
program
  .name('rxrl')
  .description('Reactive stream-processing RL for language models, the DeepSeek-R1 way (GRPO).')
  .version('0.1.0');

await program.parseAsync(process.argv);
