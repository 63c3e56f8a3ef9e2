import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import bundledChromium from '@sparticuz/chromium';
import { chromium } from 'playwright-core';
import { Subject } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { ScoredRollout } from '../../schemas/index.ts';
import { Metrics } from '../../src/metrics/metrics.ts';
import { createMetricsServer } from '../../src/metrics/server.ts';
import { scored } from '../fixtures.ts';
import { publishStep, tempDir } from './helpers.ts';

/**
 * A Chromium to drive: $CHROMIUM_PATH, one installed in a usual place, or else the headless Chromium that
 * the dev dependency @sparticuz/chromium ships inside its npm package (Linux x64 and arm64; unpacked into
 * the temp directory on first use), so `npm test` needs no browser installed.
 */
async function findBrowser(): Promise<{ path: string } | { skip: string }> {
  const installed = [
    process.env.CHROMIUM_PATH,
    '/usr/bin/chromium',
    '/usr/bin/chromium-browser',
    '/usr/bin/google-chrome',
    '/usr/bin/google-chrome-stable',
    '/snap/bin/chromium',
    '/Applications/Google Chrome.app/Contents/MacOS/Google Chrome',
  ].find((path): path is string => path !== undefined && path !== '' && existsSync(path));
  if (installed) return { path: installed };
  try {
    return { path: await bundledChromium.executablePath() };
  } catch (error) {
    return {
      skip:
        `dashboard test skipped: no Chromium found, and @sparticuz/chromium's could not be unpacked ` +
        `(${(error as Error).message}). Install one (Debian/Ubuntu: apt-get install chromium) or point ` +
        'CHROMIUM_PATH at a Chromium or Chrome executable.',
    };
  }
}
const found = await findBrowser();
if ('skip' in found) console.warn(found.skip);
const browserPath = 'path' in found ? found.path : undefined;

const rewardOf = (step: number) => 0.25 * step + 0.125;

describe('dashboard', () => {
  it.skipIf(!browserPath)(
    'draws the run live in a browser: replayed and new points on the charts, completions in the table',
    async () => {
      const metrics = new Metrics({ run: 'dash-run' });
      const completions = new Subject<ScoredRollout>();
      const server = createMetricsServer(metrics.stream, completions);
      const { url } = await server.listen(0);
      // In the C locale, as on many servers: Chromium then reports navigator.language 'en-US@posix', which
      // Intl refuses (the page once failed to load its charts there).
      const browser = await chromium.launch({
        executablePath: browserPath!,
        env: { ...process.env, LANG: 'C.UTF-8', LC_ALL: 'C.UTF-8' },
      });
      try {
        publishStep(metrics, 0);
        publishStep(metrics, 1);
        publishStep(metrics, 2);
        const page = await browser.newPage({ viewport: { width: 1280, height: 1100 } });
        const errors: string[] = [];
        page.on('pageerror', (error) => errors.push(error.message));
        page.on('console', (message) => {
          if (message.type() === 'error') errors.push(message.text());
        });
        await page.goto(`${url}/`);
        const chartPoints = (name: string) =>
          page.evaluate((n) => (globalThis as unknown as RxrlWindow).__rxrl.chartPoints(n), name);

        // What was published before the page opened is on the charts. (Page-side code is given as strings:
        // the tests are type-checked without the DOM's types.)
        await page.waitForFunction("window.__rxrl.chartPoints('train/kl').length === 3");
        expect(await chartPoints('reward/mean')).toEqual([0, 1, 2].map((s) => [s, rewardOf(s)]));

        // And what is published now comes in live.
        publishStep(metrics, 3);
        publishStep(metrics, 4);
        metrics.record('eval/pass@1', 0.5, 4);
        completions.next({
          ...scored('g7', 0, 1, { version: 4 }),
          completion: '<think>2+2</think><answer>4</answer>',
          rewards: { accuracy: 1, format: 1 },
          reward: 2,
        });
        await page.waitForFunction("window.__rxrl.chartPoints('reward/mean').length === 5");
        expect(await chartPoints('reward/mean')).toEqual([0, 1, 2, 3, 4].map((s) => [s, rewardOf(s)]));
        expect(await chartPoints('reward/accuracy')).toHaveLength(5);
        expect(await chartPoints('completions/mean_length')).toEqual([0, 1, 2, 3, 4].map((s) => [s, 40 - s]));
        expect(await chartPoints('staleness/mean')).toHaveLength(5);
        expect(await chartPoints('rollout/tokens_per_second')).toHaveLength(5);
        expect(await chartPoints('eval/pass@1')).toEqual([[4, 0.5]]);

        const row = page.locator('#completions tbody tr').first();
        await row.waitFor();
        expect(await row.locator('td').allInnerTexts()).toEqual([
          '4',
          '2',
          'accuracy 1, format 1',
          'question g7',
          '<think>2+2</think><answer>4</answer>',
        ]);
        await page.waitForFunction("document.querySelector('#summary').textContent.includes('step 4')");
        expect(await page.locator('#run').innerText()).toBe('dash-run');
        expect(await page.locator('#status').innerText()).toBe('live');
        expect(await page.locator('#latest').innerText()).toContain('drops.samples{reason=stale}');
        expect(await page.locator('canvas').count()).toBe(6);

        const screenshot = join(tempDir('rxrl-dashboard-'), 'dashboard.png');
        await page.screenshot({ path: screenshot, fullPage: true });
        const png = readFileSync(screenshot);
        expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
        expect(png.length).toBeGreaterThan(20_000);
        console.log(`dashboard screenshot: ${screenshot}`);

        // The run's end shows.
        await server.close();
        await page.waitForFunction("document.querySelector('#status').textContent === 'ended'");
        expect(errors).toEqual([]);
      } finally {
        await browser.close();
        await server.close();
      }
    },
  );
});

interface RxrlWindow {
  __rxrl: { chartPoints(name: string): [number, number][] };
}
