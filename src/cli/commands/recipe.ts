/** `rxrl run <recipe>`: the stages of a recipe in order, with a line per stage and GRPO's progress bar. */
import type { BackendRequest } from '../../policy/backend.ts';
import type { Recipe } from '../../recipe/recipe.ts';
import type { RecipeEvent, StageReport } from '../../recipe/run.ts';
import { progressDisplay } from './run.ts';

const fmt = (x: unknown, digits = 3) =>
  typeof x === 'number' && Number.isFinite(x) ? x.toFixed(digits) : '-';

/** One line that says what a finished stage left behind. */
export function describeReport(report: StageReport): string {
  const s = report.summary as Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  switch (report.type) {
    case 'pretrain':
      return `${s.parameters} parameters (${s.cached ? 'cached base model' : 'trained now'})`;
    case 'import':
      return `using ${report.output}`;
    case 'coldStart':
      return `${s.records} records`;
    case 'sft':
      return `loss ${fmt(s.firstLoss)} -> ${fmt(s.lastLoss)}; held-out ${fmt(s.heldOutLossBefore)} -> ${fmt(s.heldOutLossAfter)} (${s.trainRecords} records, ${s.tooLong} too long)`;
    case 'grpo':
      return s.before
        ? `pass@1 ${fmt(s.before.pass1)} -> ${fmt(s.after.pass1)}, format ${fmt(s.before.formatRate, 2)} -> ${fmt(s.after.formatRate, 2)}` +
            (typeof s.before.languageConsistency === 'number' ||
            typeof s.after.languageConsistency === 'number'
              ? `, language ${fmt(s.before.languageConsistency, 2)} -> ${fmt(s.after.languageConsistency, 2)}`
              : '')
        : `${s.steps} steps`;
    case 'rejectionSample': {
      const rejected = Object.entries(s.rejected as Record<string, number>)
        .filter(([, n]) => n > 0)
        .map(([reason, n]) => `${reason} ${n}`)
        .join(', ');
      return `kept ${s.kept} of ${s.generated} samples (${s.promptsCovered} prompts), ${s.pairs} preference pairs; rejected: ${rejected || 'none'}`;
    }
    case 'rewardModel':
      return `${s.trainPairs} pairs; held-out pairwise accuracy ${fmt(s.heldOutAccuracyBefore)} -> ${fmt(s.heldOutAccuracyAfter)} (${s.heldOutPairs} pairs)`;
    case 'distill':
      return `student pass@1 ${fmt(s.student.pass1)} vs teacher ${fmt(s.teacher.pass1)}`;
    case 'eval':
      return Object.entries(
        s.results as Record<
          string,
          {
            pass1: number;
            consAtK: number;
            k: number;
            formatRate: number;
            languageConsistency?: number | null;
          }
        >,
      )
        .map(
          ([name, r]) =>
            `\n    ${name.padEnd(20)} pass@1 ${fmt(r.pass1)}  cons@${r.k} ${fmt(r.consAtK)}  format ${fmt(r.formatRate, 2)}` +
            (typeof r.languageConsistency === 'number' ? `  language ${fmt(r.languageConsistency, 2)}` : ''),
        )
        .join('');
  }
}

export async function runRecipeCommand(
  recipe: Recipe,
  opts: {
    backend: BackendRequest;
    learnerThreads?: number;
    runDir: string;
    cacheDir: string;
    redo?: string[] | 'all';
    until?: string;
  },
): Promise<void> {
  const { runRecipe } = await import('../../recipe/run.ts');
  let display: ReturnType<typeof progressDisplay> | undefined;
  const on = (event: RecipeEvent) => {
    const label = (e: { index: number; total: number; stage: string; type: string }) =>
      `[${e.index + 1}/${e.total}] ${e.stage} (${e.type})`;
    switch (event.kind) {
      case 'stage-start':
        console.log(`${label(event)}: running (${event.reason})`);
        break;
      case 'stage-skipped':
        console.log(`${label(event)}: done before, reused: ${describeReport(event.report)}`);
        break;
      case 'stage-done':
        display?.stop();
        display = undefined;
        console.log(
          `${label(event)}: done in ${fmt(event.report.seconds / 60, 1)} min: ${describeReport(event.report)}`,
        );
        break;
      case 'progress':
        console.log(
          `  ${event.stage}: ${event.what} ${event.step}/${event.total}${event.loss !== undefined ? ` loss ${fmt(event.loss)}` : ''}`,
        );
        break;
      case 'grpo':
        display ??= progressDisplay();
        display.on(event.event);
        break;
    }
  };
  try {
    const summary = await runRecipe({ recipe, ...opts, onEvent: on });
    console.log(
      `\n${recipe.name}: ${summary.ran.length} stages run, ${summary.skipped.length} reused, in ${fmt(summary.seconds / 60, 1)} min; reports in ${opts.runDir}/<stage>/stage.json`,
    );
  } finally {
    display?.stop();
  }
}
