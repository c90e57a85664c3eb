#!/usr/bin/env node
/**
 * Runs the official MCP conformance suite (@modelcontextprotocol/conformance,
 * pinned in package.json) in server mode against an MCP server over
 * streamable HTTP, and prints a summary: one line per scenario with its
 * passed / failed / warning check counts, the text of every failed or
 * warning check, and a closing line `scenarios: N passed, M failed`.
 *
 * Usage:
 *     node conformance.mjs URL [options]
 *     node conformance.mjs --self-test [options]
 *     node conformance.mjs --cli ARGS...
 *
 *   URL                the server's MCP endpoint, e.g. http://127.0.0.1:PORT/mcp
 *   --self-test        start our reference server (conformance_server.mjs
 *                      http, on a port the OS picks), run against it, stop it
 *   --suite NAME       the suite's own selection: all (default here), active
 *                      (the suite's default: all but its pending scenarios),
 *                      pending
 *   --scenario NAME    run just this scenario (repeatable; instead of --suite);
 *                      `node conformance.mjs --cli list --server` lists them
 *   --strict           a WARNING check fails its scenario too
 *   --results DIR      keep the suite's results here (checks.json per
 *                      scenario, plus cli.log, the suite's own output);
 *                      default: a new directory under the system temp dir,
 *                      removed after a run that passed
 *   --timeout SECONDS  give up (and fail) after this long; default 600
 *   --verbose          also stream the suite's own output to stderr
 *   --cli ARGS...      run the suite's CLI itself with ARGS (e.g.
 *                      `--cli list --server`, `--cli server --url U
 *                      --scenario ping`), unchanged but for the Node 20
 *                      fix below; exits with its status
 *
 * Exit status: 0 when every scenario run passed (no FAILURE check; with
 * --strict no WARNING either) and the suite's CLI itself exited 0; 1 when
 * any failed, a scenario left no results, or the run timed out; 2 on a
 * usage error.
 *
 * Node 20: the suite's CLI imports fs.globSync, which Node 20 lacks (it came
 * in Node 22), so on Node 20 the CLI fails to load at all, although only
 * its tier-check command calls it. The package exports no API to call
 * instead (its one bundled file ends in `export {}`), so in --cli mode this
 * script registers conformance_node20_hooks.mjs with module.register(),
 * the supported loader-hook API, before it imports the unchanged CLI: the
 * hook hands the bundle a copy of node:fs plus a globSync that throws. It is
 * registered only when fs.globSync is missing, so on Node 22+ nothing
 * changes. Every other mode runs the suite through --cli in a child
 * process, because the CLI ends its process itself (process.exit).
 */

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire, register } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SELF = fileURLToPath(import.meta.url);
const REFERENCE_SERVER = path.join(HERE, 'conformance_server.mjs');

function usage(message) {
  process.stderr.write(`conformance: ${message}\n`);
  process.stderr.write(
    'usage: node conformance.mjs URL|--self-test [--suite all|active|pending] [--scenario NAME]...\n' +
      '                          [--strict] [--results DIR] [--timeout SECONDS] [--verbose]\n' +
      '       node conformance.mjs --cli ARGS...\n',
  );
  process.exit(2);
}

// --- --cli: the suite's own CLI, in this process -------------------------------------

/** The path of the suite's CLI script (its package.json's bin). */
function conformanceCliPath() {
  const require = createRequire(import.meta.url);
  const manifestPath = require.resolve('@modelcontextprotocol/conformance/package.json');
  const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
  const bin = typeof manifest.bin === 'string' ? manifest.bin : manifest.bin.conformance;
  return path.join(path.dirname(manifestPath), bin);
}

async function runCli(args) {
  if (typeof fs.globSync !== 'function') {
    register('./conformance_node20_hooks.mjs', pathToFileURL(`${HERE}/`));
  }
  const cli = conformanceCliPath();
  // The CLI parses process.argv (commander's default: node, script, args...).
  process.argv = [process.argv[0], cli, ...args];
  await import(pathToFileURL(cli).href);
}

// --- the reference server, for --self-test ----------------------------------------

function startReferenceServer() {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [REFERENCE_SERVER, 'http'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const stderr = createInterface({ input: child.stderr });
    stderr.on('line', (line) => process.stderr.write(`${line}\n`));
    const stdout = createInterface({ input: child.stdout });
    const timer = setTimeout(() => {
      child.kill('SIGTERM');
      reject(new Error('the reference server printed no URL within 30 s'));
    }, 30_000);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the reference server exited early (status ${code}, signal ${signal})`));
    });
    stdout.once('line', (line) => {
      clearTimeout(timer);
      const match = /^URL=(\S+)$/.exec(line);
      if (!match) {
        child.kill('SIGTERM');
        reject(new Error(`unexpected first line from the reference server: ${line}`));
        return;
      }
      resolve({
        url: match[1],
        stop: () =>
          new Promise((done) => {
            if (child.exitCode !== null || child.signalCode !== null) return done();
            child.removeAllListeners('exit');
            child.once('exit', () => done());
            child.kill('SIGTERM');
          }),
      });
    });
  });
}

// --- running the suite ------------------------------------------------------------

/** Runs `--cli ARGS` in a child, its output appended to `logPath`. */
function runCliChild(args, logPath, verbose, deadline) {
  return new Promise((resolve) => {
    const log = fs.openSync(logPath, 'a');
    fs.writeSync(log, `$ conformance ${args.join(' ')}\n`);
    const child = spawn(process.execPath, [SELF, '--cli', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      // The CLI colours its output only on a TTY; keep the log plain.
      env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
    });
    for (const stream of [child.stdout, child.stderr]) {
      stream.on('data', (chunk) => {
        fs.writeSync(log, chunk);
        if (verbose) process.stderr.write(chunk);
      });
    }
    let timedOut = false;
    const timer = setTimeout(
      () => {
        timedOut = true;
        child.kill('SIGKILL');
      },
      Math.max(0, deadline - Date.now()),
    );
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      fs.closeSync(log);
      resolve({ code, signal, timedOut });
    });
  });
}

/** checks.json of each scenario that wrote one, by scenario name. */
function readResults(resultsDir) {
  const byScenario = new Map();
  // The CLI names each directory server-<scenario>-<ISO time, ':' and '.' as '-'>.
  const pattern = /^server-(.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$/;
  // Sorted, so that in a reused --results DIR the latest run of a scenario wins.
  const entries = fs.readdirSync(resultsDir, { withFileTypes: true });
  entries.sort((a, b) => a.name.localeCompare(b.name));
  for (const entry of entries) {
    const match = entry.isDirectory() && pattern.exec(entry.name);
    if (!match) continue;
    const file = path.join(resultsDir, entry.name, 'checks.json');
    if (fs.existsSync(file)) byScenario.set(match[1], JSON.parse(fs.readFileSync(file, 'utf8')));
  }
  return byScenario;
}

/** The scenarios a suite run started, from the CLI's own log. */
function scenariosInLog(logPath) {
  const started = [];
  for (const line of fs.readFileSync(logPath, 'utf8').split('\n')) {
    const match = /^=== Running scenario: (\S+) ===$/.exec(line);
    if (match) started.push(match[1]);
  }
  return started;
}

function parseArgs(argv) {
  const options = {
    url: undefined,
    selfTest: false,
    suite: undefined,
    scenarios: [],
    strict: false,
    results: undefined,
    timeout: 600,
    verbose: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      return argv[++i];
    };
    switch (arg) {
      case '--self-test':
        options.selfTest = true;
        break;
      case '--suite':
        options.suite = value();
        break;
      case '--scenario':
        options.scenarios.push(value());
        break;
      case '--strict':
        options.strict = true;
        break;
      case '--results':
        options.results = value();
        break;
      case '--timeout':
        options.timeout = Number(value());
        break;
      case '--verbose':
        options.verbose = true;
        break;
      default:
        if (arg.startsWith('-') || options.url !== undefined) usage(`unexpected argument: ${arg}`);
        options.url = arg;
    }
  }
  if (options.selfTest === (options.url !== undefined)) usage('give either a URL or --self-test');
  if (options.suite !== undefined && options.scenarios.length > 0)
    usage('--suite and --scenario exclude each other');
  if (!(options.timeout > 0)) usage('--timeout must be a positive number of seconds');
  options.suite ??= 'all';
  return options;
}

async function runSuite(options) {
  const resultsDir = options.results
    ? path.resolve(options.results)
    : fs.mkdtempSync(path.join(os.tmpdir(), 'mcp-conformance-'));
  fs.mkdirSync(resultsDir, { recursive: true });
  const logPath = path.join(resultsDir, 'cli.log');
  fs.writeFileSync(logPath, ''); // this run's output only, also in a reused --results DIR
  const deadline = Date.now() + options.timeout * 1000;

  let server;
  let url = options.url;
  if (options.selfTest) {
    server = await startReferenceServer();
    url = server.url;
  }

  const problems = []; // run-level failures, not tied to one scenario's checks
  let expected = [];
  try {
    if (options.scenarios.length > 0) {
      expected = options.scenarios;
      for (const scenario of options.scenarios) {
        const run = await runCliChild(
          ['server', '--url', url, '--scenario', scenario, '-o', resultsDir],
          logPath,
          options.verbose,
          deadline,
        );
        if (run.timedOut) {
          problems.push(`timed out after ${options.timeout} s in scenario ${scenario}`);
          break;
        }
        if (run.code !== 0)
          problems.push(`the suite's CLI exited ${run.code ?? run.signal} for scenario ${scenario}`);
      }
    } else {
      const run = await runCliChild(
        ['server', '--url', url, '--suite', options.suite, '-o', resultsDir],
        logPath,
        options.verbose,
        deadline,
      );
      expected = scenariosInLog(logPath);
      if (run.timedOut) problems.push(`timed out after ${options.timeout} s`);
      else if (run.code !== 0) problems.push(`the suite's CLI exited ${run.code ?? run.signal}`);
      if (expected.length === 0) problems.push('the suite ran no scenario');
    }
  } finally {
    await server?.stop();
  }

  // --- the summary ---
  const results = readResults(resultsDir);
  const width = Math.max(0, ...expected.map((s) => s.length));
  let scenariosPassed = 0;
  let scenariosFailed = 0;
  const totals = { SUCCESS: 0, FAILURE: 0, WARNING: 0 };
  const out = (line) => process.stdout.write(`${line}\n`);
  out(
    `conformance: ${expected.length} scenario(s) against ${url}${options.strict ? ' (strict: warnings fail)' : ''}`,
  );
  for (const scenario of expected) {
    const checks = results.get(scenario);
    if (!checks) {
      scenariosFailed++;
      out(
        `FAIL  ${scenario.padEnd(width)}  no results (the scenario crashed or was cut off: see ${logPath})`,
      );
      continue;
    }
    const count = (status) => checks.filter((c) => c.status === status).length;
    const [passed, failed, warnings] = [count('SUCCESS'), count('FAILURE'), count('WARNING')];
    totals.SUCCESS += passed;
    totals.FAILURE += failed;
    totals.WARNING += warnings;
    const ok = failed === 0 && !(options.strict && warnings > 0);
    if (ok) scenariosPassed++;
    else scenariosFailed++;
    out(
      `${ok ? 'PASS' : 'FAIL'}  ${scenario.padEnd(width)}  ${passed} passed, ${failed} failed${warnings ? `, ${warnings} warning(s)` : ''}`,
    );
    for (const check of checks) {
      if (check.status === 'FAILURE' || check.status === 'WARNING') {
        out(`        ${check.status} ${check.id}: ${check.errorMessage ?? check.description}`);
      }
    }
  }
  for (const problem of problems) out(`ERROR ${problem}`);
  const ok = scenariosFailed === 0 && problems.length === 0;
  if (problems.length > 0 && !options.verbose) {
    // The suite's own last words (e.g. "Unknown scenario ...").
    const tail = fs.readFileSync(logPath, 'utf8').trimEnd().split('\n').slice(-40);
    out(`the end of ${logPath}:`);
    for (const line of tail) out(`  | ${line}`);
  }
  if (ok && !options.results) {
    fs.rmSync(resultsDir, { recursive: true, force: true });
    out('results: removed (all passed; --results DIR keeps them)');
  } else {
    out(`results: ${resultsDir}`);
  }
  out(`checks: ${totals.SUCCESS} passed, ${totals.FAILURE} failed, ${totals.WARNING} warning(s)`);
  out(`scenarios: ${scenariosPassed} passed, ${scenariosFailed} failed`);
  return ok ? 0 : 1;
}

const argv = process.argv.slice(2);
if (argv[0] === '--cli') {
  await runCli(argv.slice(1));
} else {
  process.exitCode = await runSuite(parseArgs(argv));
}
