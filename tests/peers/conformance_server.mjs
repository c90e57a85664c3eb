#!/usr/bin/env node
/**
 * Our reference MCP server for the official MCP conformance suite
 * (@modelcontextprotocol/conformance, pinned in package.json): it offers
 * exactly the tools, resources, prompts and behaviours that the suite's
 * server scenarios (`conformance server --suite all`) ask for, under the
 * exact names they use, so that the suite passes against it directly and,
 * with the server mounted unprefixed, through the gateway. Built on the
 * official TypeScript SDK (@modelcontextprotocol/sdk 1.32.2, pinned), with
 * its low-level Server, so that every name and schema below reaches the
 * wire verbatim.
 *
 * Usage:
 *     node conformance_server.mjs stdio
 *     node conformance_server.mjs http [--port N]
 *
 * stdio: one MCP session on stdin/stdout (for mounting as a stdio
 * downstream); diagnostics go to stderr, nothing else is written to stdout.
 *
 * http: streamable HTTP at /mcp, on 127.0.0.1 only, on port N or (default,
 * or N = 0) one the OS picks. Once it accepts connections it prints exactly
 * one line on stdout, `URL=http://127.0.0.1:<port>/mcp`; diagnostics go to
 * stderr. Stateful: each `initialize` opens a session (Mcp-Session-Id) with
 * its own server state; GET opens the session's standalone SSE stream,
 * DELETE ends the session. SSE events carry ids from an in-memory event
 * store, so a client can resume a stream with Last-Event-ID; streams of
 * clients on protocol >= 2025-11-25 start with a priming event that
 * carries `retry` (SEP-1699). DNS-rebinding protection: a request whose
 * Host is not 127.0.0.1:<port>, localhost:<port> or [::1]:<port>, or whose
 * Origin (if any) is not http:// plus one of those, is refused with 403.
 *
 * Either mode: SIGTERM or SIGINT stop it with exit status 0.
 *
 * What it offers (capabilities tools, resources {subscribe}, prompts,
 * logging, completions):
 *   tools
 *     test_simple_text             text "This is a simple text response for testing."
 *     test_image_content           one image/png (a 1x1 red pixel)
 *     test_audio_content           one audio/wav (a few samples of silence)
 *     test_embedded_resource       one embedded text resource test://embedded-resource
 *     test_multiple_content_types  text + image + embedded resource
 *                                  test://mixed-content-resource (application/json)
 *     test_tool_with_logging       3 notifications/message at level info, ~50 ms apart,
 *                                  on the call's own stream (filtered by logging/setLevel)
 *     test_tool_with_progress      notifications/progress 0, 50, 100 of 100, ~50 ms apart,
 *                                  when the call carries _meta.progressToken
 *     test_error_handling          a result with isError: true
 *     test_sampling {prompt}       sampling/createMessage to the client, answers
 *                                  "LLM response: <text>"
 *     test_elicitation {message}   elicitation/create (username, email), answers
 *                                  "User response: action=..., content=..."
 *     test_elicitation_sep1034_defaults  elicitation/create whose schema has a default
 *                                  for each primitive type (SEP-1034)
 *     test_elicitation_sep1330_enums     elicitation/create with the five enum forms
 *                                  of SEP-1330
 *     json_schema_2020_12_tool     an inputSchema with $schema (2020-12), $defs and
 *                                  additionalProperties: false, listed verbatim (SEP-1613)
 *     test_reconnection            SEP-1699 polling: closes the call's SSE stream before
 *                                  it answers (where the transport allows it), so the
 *                                  client must resume with Last-Event-ID
 *   resources
 *     test://static-text           text/plain
 *     test://static-binary         image/png, as a blob
 *     test://watched-resource      text/plain; resources/subscribe and unsubscribe
 *                                  on it (or any URI) answer {}
 *     template test://template/{id}/data   application/json naming the id
 *   prompts
 *     test_simple_prompt
 *     test_prompt_with_arguments {arg1, arg2}
 *     test_prompt_with_embedded_resource {resourceUri}
 *     test_prompt_with_image
 *   completion/complete  for the arguments of test_prompt_with_arguments
 *                        and the {id} of the template: the candidates that
 *                        start with the typed value
 *   logging/setLevel     filters this session's log notifications
 */

import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import {
  CallToolRequestSchema,
  CompleteRequestSchema,
  CreateMessageResultSchema,
  ElicitResultSchema,
  ErrorCode,
  GetPromptRequestSchema,
  ListPromptsRequestSchema,
  ListResourcesRequestSchema,
  ListResourceTemplatesRequestSchema,
  ListToolsRequestSchema,
  ReadResourceRequestSchema,
  SetLevelRequestSchema,
  SubscribeRequestSchema,
  UnsubscribeRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';

const SERVER_INFO = { name: 'mcplexer-conformance-server', version: '1.0.0' };
const HOST = '127.0.0.1';
const MCP_PATH = '/mcp';
/** The `retry` (ms) that priming events suggest to a client for resuming. */
const RETRY_INTERVAL_MS = 500;
/** The largest POST body read (the SDK's own default bound). */
const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** Events kept for resumption, over all streams; the oldest go first. */
const MAX_STORED_EVENTS = 10_000;

// A 1x1 PNG of one red pixel and an 8-sample 8 kHz mono 8-bit WAV of
// silence, both made for this file (zlib/crc32 and Python's wave module).
const PNG_BASE64 =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC';
const WAV_BASE64 = 'UklGRiwAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQgAAACAgICAgICAgA==';

function log(message) {
  process.stderr.write(`conformance_server: ${message}\n`);
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        resolve();
      },
      { once: true },
    );
  });
}

const text = (t) => ({ type: 'text', text: t });
const NO_ARGUMENTS = { type: 'object', properties: {} };

// --- tools -------------------------------------------------------------------

/** One tool: its tools/list entry and its handler (args, extra, session). */
function tool(name, description, inputSchema, handler) {
  return { definition: { name, description, inputSchema }, handler };
}

/**
 * A JSON-RPC error with exactly this code and message on the wire (an
 * McpError would prefix its message with "MCP error <code>: ").
 */
function protocolError(code, message, data) {
  return Object.assign(new Error(message), { code, data });
}

/**
 * Bad tool arguments: answered as a tool execution error (isError: true),
 * which the model can read and correct, not as a protocol error.
 */
class ToolInputError extends Error {}

function requireString(args, key) {
  const value = args?.[key];
  if (typeof value !== 'string') {
    throw new ToolInputError(`Invalid arguments: '${key}' (a string) is required`);
  }
  return value;
}

/** Asks the client for input; a client without the capability gets a tool error. */
async function elicit(session, extra, params) {
  if (!session.server.getClientCapabilities()?.elicitation) {
    return {
      isError: true,
      content: [text('The client does not support elicitation (no elicitation capability)')],
    };
  }
  // On the tool call's own stream (related to its request), as sampling below.
  return extra.sendRequest({ method: 'elicitation/create', params }, ElicitResultSchema);
}

const ELICIT_SEP1034_SCHEMA = {
  type: 'object',
  properties: {
    name: { type: 'string', description: 'Full name', default: 'John Doe' },
    age: { type: 'integer', description: 'Age in years', default: 30 },
    score: { type: 'number', description: 'Score', default: 95.5 },
    status: {
      type: 'string',
      description: 'Account status',
      enum: ['active', 'inactive', 'pending'],
      default: 'active',
    },
    verified: { type: 'boolean', description: 'Whether the account is verified', default: true },
  },
};

const ELICIT_SEP1330_SCHEMA = {
  type: 'object',
  properties: {
    untitledSingle: {
      type: 'string',
      description: 'Pick one (untitled single-select)',
      enum: ['option1', 'option2', 'option3'],
    },
    titledSingle: {
      type: 'string',
      description: 'Pick one (titled single-select)',
      oneOf: [
        { const: 'value1', title: 'First Option' },
        { const: 'value2', title: 'Second Option' },
        { const: 'value3', title: 'Third Option' },
      ],
    },
    legacyEnum: {
      type: 'string',
      description: 'Pick one (legacy titled, enumNames)',
      enum: ['opt1', 'opt2', 'opt3'],
      enumNames: ['Option One', 'Option Two', 'Option Three'],
    },
    untitledMulti: {
      type: 'array',
      description: 'Pick any (untitled multi-select)',
      items: { type: 'string', enum: ['option1', 'option2', 'option3'] },
    },
    titledMulti: {
      type: 'array',
      description: 'Pick any (titled multi-select)',
      items: {
        anyOf: [
          { const: 'value1', title: 'First Choice' },
          { const: 'value2', title: 'Second Choice' },
          { const: 'value3', title: 'Third Choice' },
        ],
      },
    },
  },
};

const JSON_SCHEMA_2020_12 = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  type: 'object',
  $defs: {
    address: {
      type: 'object',
      properties: {
        street: { type: 'string' },
        city: { type: 'string' },
      },
    },
  },
  properties: {
    name: { type: 'string' },
    address: { $ref: '#/$defs/address' },
  },
  additionalProperties: false,
};

function elicitationSummary(result) {
  if (result.isError) return result;
  return {
    content: [
      text(`Elicitation completed: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
    ],
  };
}

const TOOLS = [
  tool('test_simple_text', 'Returns one text content item', NO_ARGUMENTS, async () => ({
    content: [text('This is a simple text response for testing.')],
  })),
  tool('test_image_content', 'Returns one image content item (PNG)', NO_ARGUMENTS, async () => ({
    content: [{ type: 'image', data: PNG_BASE64, mimeType: 'image/png' }],
  })),
  tool('test_audio_content', 'Returns one audio content item (WAV)', NO_ARGUMENTS, async () => ({
    content: [{ type: 'audio', data: WAV_BASE64, mimeType: 'audio/wav' }],
  })),
  tool('test_embedded_resource', 'Returns one embedded text resource', NO_ARGUMENTS, async () => ({
    content: [
      {
        type: 'resource',
        resource: {
          uri: 'test://embedded-resource',
          mimeType: 'text/plain',
          text: 'This is an embedded resource content.',
        },
      },
    ],
  })),
  tool(
    'test_multiple_content_types',
    'Returns text, image and embedded resource content together',
    NO_ARGUMENTS,
    async () => ({
      content: [
        text('Multiple content types test:'),
        { type: 'image', data: PNG_BASE64, mimeType: 'image/png' },
        {
          type: 'resource',
          resource: {
            uri: 'test://mixed-content-resource',
            mimeType: 'application/json',
            text: JSON.stringify({ test: 'data', value: 123 }),
          },
        },
      ],
    }),
  ),
  tool(
    'test_tool_with_logging',
    'Sends three info log notifications while it runs',
    NO_ARGUMENTS,
    async (_args, extra, session) => {
      const steps = ['Tool execution started', 'Tool processing data', 'Tool execution completed'];
      for (const [i, message] of steps.entries()) {
        if (i > 0) await sleep(50, extra.signal);
        await session.sendLog(extra, 'info', message);
      }
      return { content: [text('Tool with logging executed successfully')] };
    },
  ),
  tool(
    'test_tool_with_progress',
    'Reports progress 0, 50 and 100 of 100 while it runs',
    NO_ARGUMENTS,
    async (_args, extra) => {
      const progressToken = extra._meta?.progressToken;
      for (const [i, progress] of [0, 50, 100].entries()) {
        if (i > 0) await sleep(50, extra.signal);
        if (progressToken !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken, progress, total: 100, message: `${progress}% done` },
          });
        }
      }
      return { content: [text(`Progress reported for token ${JSON.stringify(progressToken ?? null)}`)] };
    },
  ),
  tool('test_error_handling', 'Always fails, with isError: true', NO_ARGUMENTS, async () => ({
    isError: true,
    content: [text('This tool intentionally returns an error for testing')],
  })),
  tool(
    'test_sampling',
    'Asks the client for an LLM completion (sampling/createMessage)',
    {
      type: 'object',
      properties: { prompt: { type: 'string', description: 'The prompt to send to the LLM' } },
      required: ['prompt'],
    },
    async (args, extra, session) => {
      const prompt = requireString(args, 'prompt');
      if (!session.server.getClientCapabilities()?.sampling) {
        return {
          isError: true,
          content: [text('The client does not support sampling (no sampling capability)')],
        };
      }
      const result = await extra.sendRequest(
        {
          method: 'sampling/createMessage',
          params: { messages: [{ role: 'user', content: text(prompt) }], maxTokens: 100 },
        },
        CreateMessageResultSchema,
      );
      const reply = result.content?.type === 'text' ? result.content.text : JSON.stringify(result.content);
      return { content: [text(`LLM response: ${reply}`)] };
    },
  ),
  tool(
    'test_elicitation',
    'Asks the user for input (elicitation/create)',
    {
      type: 'object',
      properties: { message: { type: 'string', description: 'The message to show the user' } },
      required: ['message'],
    },
    async (args, extra, session) => {
      const message = requireString(args, 'message');
      const result = await elicit(session, extra, {
        message,
        requestedSchema: {
          type: 'object',
          properties: {
            username: { type: 'string', description: "User's response" },
            email: { type: 'string', description: "User's email address" },
          },
          required: ['username', 'email'],
        },
      });
      if (result.isError) return result;
      return {
        content: [
          text(`User response: action=${result.action}, content=${JSON.stringify(result.content ?? {})}`),
        ],
      };
    },
  ),
  tool(
    'test_elicitation_sep1034_defaults',
    'Elicitation whose schema has a default for each primitive type (SEP-1034)',
    NO_ARGUMENTS,
    async (_args, extra, session) =>
      elicitationSummary(
        await elicit(session, extra, {
          message: 'Please review these fields (each has a default)',
          requestedSchema: ELICIT_SEP1034_SCHEMA,
        }),
      ),
  ),
  tool(
    'test_elicitation_sep1330_enums',
    'Elicitation with the five enum schema forms (SEP-1330)',
    NO_ARGUMENTS,
    async (_args, extra, session) =>
      elicitationSummary(
        await elicit(session, extra, {
          message: 'Please pick options',
          requestedSchema: ELICIT_SEP1330_SCHEMA,
        }),
      ),
  ),
  tool(
    'json_schema_2020_12_tool',
    'Tool with JSON Schema 2020-12 features ($schema, $defs, additionalProperties)',
    JSON_SCHEMA_2020_12,
    async (args) => {
      const unknown = Object.keys(args ?? {}).filter((key) => !(key in JSON_SCHEMA_2020_12.properties));
      if (unknown.length > 0) {
        throw new ToolInputError(
          `Invalid arguments: unknown ${unknown.join(', ')} (additionalProperties is false)`,
        );
      }
      return { content: [text(`json_schema_2020_12_tool called with ${JSON.stringify(args ?? {})}`)] };
    },
  ),
  tool(
    'test_reconnection',
    'Closes its own SSE stream before answering, so the client must resume (SEP-1699)',
    NO_ARGUMENTS,
    async (_args, extra) => {
      // The SDK hands out closeSSEStream only where the client can
      // resume: an event store, and protocol >= 2025-11-25 on the
      // request (older clients get no priming event to resume from).
      const closed = typeof extra.closeSSEStream === 'function';
      if (closed) extra.closeSSEStream();
      await sleep(100, extra.signal);
      return {
        content: [
          text(
            closed
              ? 'Reconnection test completed: the stream was closed mid-call and the result was delivered after the client resumed.'
              : 'Reconnection test completed without closing the stream (this request cannot resume: no event store, or protocol < 2025-11-25).',
          ),
        ],
      };
    },
  ),
];
const TOOLS_BY_NAME = new Map(TOOLS.map((t) => [t.definition.name, t]));

// --- resources -----------------------------------------------------------------

const RESOURCES = [
  {
    uri: 'test://static-text',
    name: 'static-text',
    title: 'Static text resource',
    description: 'A fixed text resource',
    mimeType: 'text/plain',
    read: (uri) => ({
      uri,
      mimeType: 'text/plain',
      text: 'This is the content of the static text resource.',
    }),
  },
  {
    uri: 'test://static-binary',
    name: 'static-binary',
    title: 'Static binary resource',
    description: 'A fixed binary resource (a PNG image)',
    mimeType: 'image/png',
    read: (uri) => ({ uri, mimeType: 'image/png', blob: PNG_BASE64 }),
  },
  {
    uri: 'test://watched-resource',
    name: 'watched-resource',
    title: 'Watched resource',
    description: 'A text resource to subscribe to',
    mimeType: 'text/plain',
    read: (uri) => ({ uri, mimeType: 'text/plain', text: 'Watched resource content' }),
  },
];
const RESOURCES_BY_URI = new Map(RESOURCES.map((r) => [r.uri, r]));

const TEMPLATE = {
  uriTemplate: 'test://template/{id}/data',
  name: 'template-data',
  title: 'Templated data resource',
  description: 'JSON data for the id in the URI',
  mimeType: 'application/json',
};
const TEMPLATE_PATTERN = /^test:\/\/template\/([^/]+)\/data$/;
const TEMPLATE_ID_CANDIDATES = ['1', '2', '3', '123', '456'];

function readResource(uri) {
  const fixed = RESOURCES_BY_URI.get(uri);
  if (fixed) return fixed.read(uri);
  const match = TEMPLATE_PATTERN.exec(uri);
  if (match) {
    const id = decodeURIComponent(match[1]);
    return {
      uri,
      mimeType: 'application/json',
      text: JSON.stringify({ id, templateTest: true, data: `Data for ID: ${id}` }),
    };
  }
  // -32002: "Resource not found", as the spec's resources page names it.
  throw protocolError(-32002, `Resource not found: ${uri}`, { uri });
}

// --- prompts -------------------------------------------------------------------

const PROMPTS = [
  {
    definition: { name: 'test_simple_prompt', description: 'A prompt without arguments' },
    get: () => [{ role: 'user', content: text('This is a simple prompt for testing.') }],
  },
  {
    definition: {
      name: 'test_prompt_with_arguments',
      description: 'A prompt with two required arguments',
      arguments: [
        { name: 'arg1', description: 'First test argument', required: true },
        { name: 'arg2', description: 'Second test argument', required: true },
      ],
    },
    get: (args) => [
      { role: 'user', content: text(`Prompt with arguments: arg1='${args.arg1}', arg2='${args.arg2}'`) },
    ],
  },
  {
    definition: {
      name: 'test_prompt_with_embedded_resource',
      description: 'A prompt that embeds a resource',
      arguments: [{ name: 'resourceUri', description: 'URI of the resource to embed', required: true }],
    },
    get: (args) => [
      {
        role: 'user',
        content: {
          type: 'resource',
          resource: {
            uri: args.resourceUri,
            mimeType: 'text/plain',
            text: 'Embedded resource content for testing.',
          },
        },
      },
      { role: 'user', content: text('Please process the embedded resource above.') },
    ],
  },
  {
    definition: { name: 'test_prompt_with_image', description: 'A prompt that carries an image' },
    get: () => [
      { role: 'user', content: { type: 'image', data: PNG_BASE64, mimeType: 'image/png' } },
      { role: 'user', content: text('Please analyze the image above.') },
    ],
  },
];
const PROMPTS_BY_NAME = new Map(PROMPTS.map((p) => [p.definition.name, p]));

const PROMPT_ARGUMENT_CANDIDATES = {
  test_prompt_with_arguments: {
    arg1: ['test', 'testValue1', 'hello', 'paris', 'park'],
    arg2: ['test', 'testValue2', 'world', 'party'],
  },
};

function complete({ ref, argument }) {
  let candidates = [];
  if (ref.type === 'ref/prompt') {
    if (!PROMPTS_BY_NAME.has(ref.name)) {
      throw protocolError(ErrorCode.InvalidParams, `Unknown prompt: ${ref.name}`);
    }
    candidates = PROMPT_ARGUMENT_CANDIDATES[ref.name]?.[argument.name] ?? [];
  } else if (ref.type === 'ref/resource') {
    if (ref.uri !== TEMPLATE.uriTemplate) {
      throw protocolError(ErrorCode.InvalidParams, `Unknown resource template: ${ref.uri}`);
    }
    candidates = argument.name === 'id' ? TEMPLATE_ID_CANDIDATES : [];
  }
  const values = candidates.filter((value) => value.startsWith(argument.value ?? ''));
  return { completion: { values, total: values.length, hasMore: false } };
}

// --- one MCP server per session -------------------------------------------------

const LOG_LEVELS = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

function createSession() {
  const server = new Server(SERVER_INFO, {
    capabilities: {
      tools: {},
      resources: { subscribe: true },
      prompts: {},
      logging: {},
      completions: {},
    },
    instructions: 'Reference server for the MCP conformance suite (mcplexer tests).',
  });
  const session = {
    server,
    logLevel: undefined, // no logging/setLevel yet: every level goes out
    subscriptions: new Set(),
    /** A notifications/message on the stream of the request behind `extra`. */
    async sendLog(extra, level, data) {
      if (this.logLevel && LOG_LEVELS.indexOf(level) < LOG_LEVELS.indexOf(this.logLevel)) return;
      await extra.sendNotification({
        method: 'notifications/message',
        params: { level, logger: SERVER_INFO.name, data },
      });
    },
  };

  server.setRequestHandler(SetLevelRequestSchema, async (request) => {
    session.logLevel = request.params.level;
    return {};
  });

  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: TOOLS.map((t) => t.definition) }));
  server.setRequestHandler(CallToolRequestSchema, async (request, extra) => {
    const entry = TOOLS_BY_NAME.get(request.params.name);
    if (!entry) throw protocolError(ErrorCode.InvalidParams, `Unknown tool: ${request.params.name}`);
    try {
      return await entry.handler(request.params.arguments ?? {}, extra, session);
    } catch (error) {
      if (error instanceof ToolInputError) return { isError: true, content: [text(error.message)] };
      throw error;
    }
  });

  server.setRequestHandler(ListResourcesRequestSchema, async () => ({
    resources: RESOURCES.map(({ read: _read, ...listed }) => listed),
  }));
  server.setRequestHandler(ListResourceTemplatesRequestSchema, async () => ({
    resourceTemplates: [TEMPLATE],
  }));
  server.setRequestHandler(ReadResourceRequestSchema, async (request) => ({
    contents: [readResource(request.params.uri)],
  }));
  server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    session.subscriptions.add(request.params.uri);
    return {};
  });
  server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    session.subscriptions.delete(request.params.uri);
    return {};
  });

  server.setRequestHandler(ListPromptsRequestSchema, async () => ({
    prompts: PROMPTS.map((p) => p.definition),
  }));
  server.setRequestHandler(GetPromptRequestSchema, async (request) => {
    const prompt = PROMPTS_BY_NAME.get(request.params.name);
    if (!prompt) throw protocolError(ErrorCode.InvalidParams, `Unknown prompt: ${request.params.name}`);
    const args = request.params.arguments ?? {};
    for (const argument of prompt.definition.arguments ?? []) {
      if (argument.required && typeof args[argument.name] !== 'string') {
        throw protocolError(ErrorCode.InvalidParams, `Missing required argument: ${argument.name}`);
      }
    }
    return { description: prompt.definition.description, messages: prompt.get(args) };
  });

  server.setRequestHandler(CompleteRequestSchema, async (request) => complete(request.params));

  return session;
}

// --- resumability: an in-memory event store ---------------------------------------

/**
 * Every SSE event the transport sends is stored here under an id
 * `<streamId>_<sequence>`, so that a GET with Last-Event-ID replays what
 * followed that id on the same stream. Bounded: the oldest events go first.
 */
class MemoryEventStore {
  constructor(limit) {
    this.limit = limit;
    this.events = new Map(); // eventId -> { streamId, message }, in insertion order
    this.sequence = 0;
  }

  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${++this.sequence}`;
    this.events.set(eventId, { streamId, message });
    while (this.events.size > this.limit) {
      this.events.delete(this.events.keys().next().value);
    }
    return eventId;
  }

  async getStreamIdForEventId(eventId) {
    return this.events.get(eventId)?.streamId;
  }

  async replayEventsAfter(lastEventId, { send }) {
    const last = this.events.get(lastEventId);
    if (!last) return '';
    let after = false;
    for (const [eventId, { streamId, message }] of this.events) {
      if (eventId === lastEventId) {
        after = true;
        continue;
      }
      // Priming events are stored as {}: nothing to replay.
      if (after && streamId === last.streamId && Object.keys(message).length > 0) {
        await send(eventId, message);
      }
    }
    return last.streamId;
  }
}

// --- stdio ---------------------------------------------------------------------

async function serveStdio() {
  const session = createSession();
  const transport = new StdioServerTransport();
  transport.onclose = () => process.exit(0);
  await session.server.connect(transport);
  log('serving MCP on stdio');
  process.stdin.on('end', () => process.exit(0));
  return async () => {
    await session.server.close();
  };
}

// --- streamable HTTP --------------------------------------------------------------

function sendJsonError(res, status, code, message, headers = {}) {
  if (res.headersSent) return;
  res.writeHead(status, { 'Content-Type': 'application/json', ...headers });
  res.end(JSON.stringify({ jsonrpc: '2.0', error: { code, message }, id: null }));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(Object.assign(new Error('request body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function isInitializeRequest(body) {
  const messages = Array.isArray(body) ? body : [body];
  return messages.some((m) => m && typeof m === 'object' && m.method === 'initialize');
}

async function serveHttp(requestedPort) {
  const sessions = new Map(); // Mcp-Session-Id -> { transport, session }
  let allowedHosts = new Set();

  function hostAndOriginAllowed(req) {
    const host = (req.headers.host ?? '').toLowerCase();
    if (!allowedHosts.has(host)) return false;
    const origin = req.headers.origin;
    if (origin === undefined) return true;
    let parsed;
    try {
      parsed = new URL(origin);
    } catch {
      return false;
    }
    return parsed.protocol === 'http:' && allowedHosts.has(parsed.host.toLowerCase());
  }

  async function openSession(req, res, body) {
    const session = createSession();
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new MemoryEventStore(MAX_STORED_EVENTS),
      retryInterval: RETRY_INTERVAL_MS,
      onsessioninitialized: (sessionId) => {
        sessions.set(sessionId, { transport, session });
        log(`session ${sessionId} opened`);
      },
    });
    transport.onclose = () => {
      const sessionId = transport.sessionId;
      if (sessionId && sessions.delete(sessionId)) log(`session ${sessionId} closed`);
    };
    await session.server.connect(transport);
    await transport.handleRequest(req, res, body);
  }

  async function handle(req, res) {
    if (!hostAndOriginAllowed(req)) {
      log(
        `refused ${req.method} with Host ${JSON.stringify(req.headers.host)} Origin ${JSON.stringify(req.headers.origin)}`,
      );
      sendJsonError(res, 403, -32000, 'Forbidden: Host or Origin header is not this loopback server');
      return;
    }
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (path !== MCP_PATH) {
      sendJsonError(res, 404, -32000, `Not found: the MCP endpoint is ${MCP_PATH}`);
      return;
    }
    const sessionId = req.headers['mcp-session-id'];
    const known = sessionId === undefined ? undefined : sessions.get(sessionId);
    if (sessionId !== undefined && !known) {
      sendJsonError(res, 404, -32001, 'Session not found');
      return;
    }
    if (req.method === 'POST') {
      let body;
      try {
        body = JSON.parse(await readBody(req));
      } catch (error) {
        if (error.status === 413) sendJsonError(res, 413, -32600, 'Request body too large');
        else sendJsonError(res, 400, -32700, 'Parse error: the body is not JSON');
        return;
      }
      if (known) {
        await known.transport.handleRequest(req, res, body);
      } else if (isInitializeRequest(body)) {
        await openSession(req, res, body);
      } else {
        sendJsonError(res, 400, -32000, 'Bad Request: no Mcp-Session-Id (send initialize first)');
      }
      return;
    }
    if (req.method === 'GET' || req.method === 'DELETE') {
      if (!known) {
        sendJsonError(res, 400, -32000, 'Bad Request: Mcp-Session-Id header is required');
        return;
      }
      await known.transport.handleRequest(req, res);
      return;
    }
    sendJsonError(res, 405, -32000, 'Method not allowed', { Allow: 'GET, POST, DELETE' });
  }

  const httpServer = http.createServer((req, res) => {
    handle(req, res).catch((error) => {
      log(`error handling ${req.method} ${req.url}: ${error?.stack ?? error}`);
      sendJsonError(res, 500, -32603, 'Internal server error');
    });
  });
  await new Promise((resolve, reject) => {
    httpServer.once('error', reject);
    httpServer.listen(requestedPort, HOST, resolve);
  });
  const { port } = httpServer.address();
  allowedHosts = new Set([`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`]);
  const url = `http://${HOST}:${port}${MCP_PATH}`;
  log(`serving MCP at ${url}`);
  process.stdout.write(`URL=${url}\n`);

  return async () => {
    for (const { transport } of sessions.values()) {
      await transport.close().catch(() => {});
    }
    httpServer.closeAllConnections();
    await new Promise((resolve) => httpServer.close(() => resolve()));
  };
}

// --- main ----------------------------------------------------------------------

function usage(message) {
  if (message) process.stderr.write(`conformance_server: ${message}\n`);
  process.stderr.write(
    'usage: node conformance_server.mjs stdio\n       node conformance_server.mjs http [--port N]\n',
  );
  process.exit(2);
}

async function main(argv) {
  const [mode, ...rest] = argv;
  let stop;
  if (mode === 'stdio') {
    if (rest.length > 0) usage(`unexpected argument: ${rest[0]}`);
    stop = await serveStdio();
  } else if (mode === 'http') {
    let port = 0;
    for (let i = 0; i < rest.length; i++) {
      if (rest[i] === '--port' && i + 1 < rest.length) {
        port = Number(rest[++i]);
        if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`bad port: ${rest[i]}`);
      } else {
        usage(`unexpected argument: ${rest[i]}`);
      }
    }
    stop = await serveHttp(port);
  } else {
    usage(mode === undefined ? 'a mode is required' : `unknown mode: ${mode}`);
  }
  let stopping = false;
  const onSignal = (signal) => {
    if (stopping) return;
    stopping = true;
    log(`stopping on ${signal}`);
    stop().finally(() => process.exit(0));
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
}

await main(process.argv.slice(2));
