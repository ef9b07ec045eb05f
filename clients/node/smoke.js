#!/usr/bin/env node
// Smoke test of the agenttasks gRPC API from Node.js: proof that a client in another language
// can use proto/ as it stands, loaded at run time (no generated code to keep in step).
//
// It submits a task and watches it to completion (a worker must be serving the agent), then
// submits a second task and cancels it. Every watched event is printed as a line
//   event <type> sequence=<n> status=<status>
// and the last line is a JSON summary. Exit 0 on success; 1 with a message on stderr otherwise.
//
// Environment: AGENTTASKS_SERVER (host:port of the gRPC server), AGENTTASKS_API_KEY (a client
// or admin key, sent as `authorization: Bearer <key>`), AGENT_ID (the agent to give tasks to).
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
// Every call gets a deadline, so a server or worker that never answers fails the run instead of
// hanging it. Generous: the watch lasts as long as the worker takes.
const CALL_SECONDS = 30;

class SmokeError extends Error {}

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new SmokeError(`${name} is not set (need AGENTTASKS_SERVER, AGENTTASKS_API_KEY and AGENT_ID)`);
  }
  return value;
}

function loadTaskService() {
  const definition = protoLoader.loadSync(['agenttasks/v1/task_service.proto'], {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the proto: snake_case, like the REST JSON
    longs: String, // int64 (sequence numbers) as decimal strings, never rounded
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).agenttasks.v1.TaskService;
}

function codeName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

function describeError(step, error) {
  if (error instanceof SmokeError) return error;
  if (error && typeof error.code === 'number') {
    return new SmokeError(`${step}: ${codeName(error.code)}: ${error.details || error.message}`);
  }
  return new SmokeError(`${step}: ${error && error.stack ? error.stack : error}`);
}

function deadline() {
  return new Date(Date.now() + CALL_SECONDS * 1000);
}

class Api {
  constructor(server, apiKey) {
    const TaskService = loadTaskService();
    this.client = new TaskService(server, grpc.credentials.createInsecure());
    this.metadata = new grpc.Metadata();
    this.metadata.set('authorization', `Bearer ${apiKey}`);
  }

  unary(method, request) {
    return new Promise((resolve, reject) => {
      this.client[method](request, this.metadata, { deadline: deadline() }, (error, response) => {
        if (error) reject(describeError(method, error));
        else resolve(response);
      });
    });
  }

  // Follows a task from its snapshot to the stream's `end` message; resolves with every message.
  watch(agentId, taskId, onEvent) {
    return new Promise((resolve, reject) => {
      const events = [];
      const call = this.client.WatchTask({ agent_id: agentId, task_id: taskId }, this.metadata, {
        deadline: deadline(),
      });
      call.on('data', (event) => {
        events.push(event);
        onEvent(event);
      });
      call.on('error', (error) => reject(describeError('WatchTask', error)));
      call.on('end', () => resolve(events));
    });
  }

  close() {
    this.client.close();
  }
}

function printEvent(event) {
  console.log(`event ${event.type} sequence=${event.sequence} status=${event.status}`);
}

async function completeOne(api, agentId) {
  const submitted = await api.unary('Submit', {
    agent_id: agentId,
    message: 'smoke: complete me',
    metadata: { fields: { client: { string_value: 'node' } } },
  });
  console.log(`submitted ${submitted.task_id} status=${submitted.status}`);
  const events = await api.watch(agentId, submitted.task_id, printEvent);
  const last = events[events.length - 1];
  if (!last || last.type !== 'end') {
    throw new SmokeError(`WatchTask: the stream ended without an end event after ${events.length} events`);
  }
  if (last.status !== 'completed') {
    throw new SmokeError(`task ${submitted.task_id} ended ${last.status} (${last.reason}), not completed`);
  }
  const { task } = await api.unary('GetStatus', { agent_id: agentId, task_id: submitted.task_id });
  return {
    task_id: submitted.task_id,
    status: task.status,
    result: task.result ? task.result.text : null,
    output: task.output,
    events: events.map((e) => ({ type: e.type, sequence: e.sequence, status: e.status })),
  };
}

async function cancelOne(api, agentId) {
  const submitted = await api.unary('Submit', { agent_id: agentId, message: 'smoke: cancel me' });
  console.log(`submitted ${submitted.task_id} status=${submitted.status}`);
  const cancelled = await api.unary('Cancel', { agent_id: agentId, task_id: submitted.task_id });
  console.log(`cancelled ${submitted.task_id} status=${cancelled.task.status}`);
  if (cancelled.task.status !== 'cancelled') {
    throw new SmokeError(`Cancel: task ${submitted.task_id} is ${cancelled.task.status}, not cancelled`);
  }
  return { task_id: submitted.task_id, status: cancelled.task.status };
}

async function main() {
  const server = requireEnv('AGENTTASKS_SERVER');
  const apiKey = requireEnv('AGENTTASKS_API_KEY');
  const agentId = requireEnv('AGENT_ID');
  const api = new Api(server, apiKey);
  try {
    const completed = await completeOne(api, agentId);
    const cancelled = await cancelOne(api, agentId);
    console.log(JSON.stringify({ ok: true, server, agent_id: agentId, completed, cancelled }));
  } finally {
    api.close();
  }
}

main().catch((error) => {
  const failure = describeError('smoke', error);
  console.error(`smoke.js failed: ${failure.message}`);
  process.exitCode = 1;
});
