#!/usr/bin/env node
// tools/otlp_decode.js — decodes OTLP/HTTP JSON trace export bodies with the
// official opentelemetry-proto definitions (loaded by protobufjs from the
// .proto files tools/otlp-proto.sh installs), for spec/otel_spec.lua.
//
//   node tools/otlp_decode.js NODE_DIR BODY_FILE...
//
// Each body must be an ExportTraceServiceRequest in the OTLP JSON mapping
// (lowerCamelCase field names, trace/span ids as hex, enums as integers,
// 64-bit integers as decimal strings or numbers). Checked strictly: every
// key must be a field of its message (protobufjs' fromObject would silently
// ignore an unknown one), ids must have their exact lengths, then the message
// is verified, encoded to the protobuf binary form and decoded back. Prints
// one JSON document: { requests, resources: [attrs], scopes: [{name,
// version}], spans: [{ traceId, spanId, parentSpanId, name, kind (enum
// name), startTimeUnixNano, endTimeUnixNano, attributes: { key: value },
// status: { code (enum name), message } }] } (values: strings, numbers,
// booleans, arrays; int64s as decimal strings). Exit 1 with one line on
// stderr when a body does not conform.
'use strict';
const fs = require('fs');
const path = require('path');

const [nodeDir, ...files] = process.argv.slice(2);
if (!nodeDir || files.length === 0) {
  process.stderr.write('usage: otlp_decode.js NODE_DIR BODY_FILE...\n');
  process.exit(2);
}
const modules = path.resolve(nodeDir, 'node_modules');
const protobuf = require(path.join(modules, 'protobufjs'));
const protoRoot = path.join(modules, '@opentelemetry/otlp-grpc-exporter-base/build/protos');

const root = new protobuf.Root();
root.resolvePath = (origin, target) => path.join(protoRoot, target);
root.loadSync('opentelemetry/proto/collector/trace/v1/trace_service.proto');
root.resolveAll();
const Request = root.lookupType('opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest');
const SpanKind = root.lookupEnum('opentelemetry.proto.trace.v1.Span.SpanKind');
const StatusCode = root.lookupEnum('opentelemetry.proto.trace.v1.Status.StatusCode');

const ID_BYTES = { traceId: 16, spanId: 8, parentSpanId: 8 };
const INT64 = new Set(['int64', 'uint64', 'fixed64', 'sfixed64', 'sint64']);

function fail(where, msg) {
  throw new Error(`${where}: ${msg}`);
}

// Walks a JSON object along its message type: unknown keys, wrong JSON
// types and malformed ids fail; hex ids become bytes (the OTLP JSON mapping).
function conform(type, obj, where) {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) fail(where, `${type.name} object expected`);
  const out = {};
  for (const [key, val] of Object.entries(obj)) {
    const field = type.fields[key];
    if (!field) fail(where, `unknown field '${key}' in ${type.fullName}`);
    const at = `${where}.${key}`;
    const one = (v, i) => {
      const w = i === undefined ? at : `${at}[${i}]`;
      if (field.resolvedType instanceof protobuf.Type) return conform(field.resolvedType, v, w);
      if (field.resolvedType instanceof protobuf.Enum) {
        if (!Number.isInteger(v) || field.resolvedType.valuesById[v] === undefined) fail(w, 'enum integer expected');
        return v;
      }
      if (field.type === 'bytes') {
        const n = ID_BYTES[key];
        if (typeof v !== 'string' || !/^([0-9a-f]{2})*$/.test(v)) fail(w, 'lowercase hex expected');
        if (n !== undefined && v.length !== 2 * n) fail(w, `${n}-byte id expected, got ${v.length / 2} bytes`);
        return Buffer.from(v, 'hex');
      }
      if (INT64.has(field.type)) {
        if (!(typeof v === 'string' && /^-?[0-9]+$/.test(v)) && !Number.isSafeInteger(v)) fail(w, 'integer expected');
        return v;
      }
      if (field.type === 'string' && typeof v !== 'string') fail(w, 'string expected');
      if (field.type === 'bool' && typeof v !== 'boolean') fail(w, 'boolean expected');
      if (field.type === 'double' && typeof v !== 'number') fail(w, 'number expected');
      return v;
    };
    if (field.repeated) {
      if (!Array.isArray(val)) fail(at, 'array expected');
      out[key] = val.map(one);
    } else {
      out[key] = one(val);
    }
  }
  return out;
}

const str = (v) => (v === undefined || v === null ? v : String(v));

function anyValue(v) {
  const c = v.value; // the oneof case that was sent (toObject oneofs: true)
  if (c === 'arrayValue') return ((v.arrayValue && v.arrayValue.values) || []).map(anyValue);
  if (c === 'intValue') return str(v.intValue === undefined ? '0' : v.intValue);
  if (c === 'stringValue') return v.stringValue === undefined ? '' : v.stringValue;
  if (c === 'doubleValue') return v.doubleValue === undefined ? 0 : v.doubleValue;
  if (c === 'boolValue') return v.boolValue === true;
  fail('attributes', `unsupported AnyValue case '${c}'`);
  return null;
}

function attributes(list) {
  const out = {};
  for (const kv of list || []) {
    if (kv.key in out) fail('attributes', `duplicate key '${kv.key}'`);
    out[kv.key] = anyValue(kv.value || {});
  }
  return out;
}

const hex = (b) => (b && b.length ? Buffer.from(b).toString('hex') : undefined);

const result = { requests: 0, resources: [], scopes: [], spans: [] };
try {
  for (const file of files) {
    const where = path.basename(file);
    let json;
    try {
      json = JSON.parse(fs.readFileSync(file, 'utf8'));
    } catch (e) {
      fail(where, `not JSON: ${e.message}`);
    }
    const msg = Request.fromObject(conform(Request, json, where));
    const bad = Request.verify(msg);
    if (bad) fail(where, `does not verify: ${bad}`);
    const decoded = Request.toObject(Request.decode(Request.encode(msg).finish()), {
      longs: String, enums: Number, defaults: false, oneofs: true,
    });
    result.requests++;
    for (const rs of decoded.resourceSpans || []) {
      result.resources.push(attributes(rs.resource && rs.resource.attributes));
      for (const ss of rs.scopeSpans || []) {
        result.scopes.push({ name: ss.scope && ss.scope.name, version: ss.scope && ss.scope.version });
        for (const s of ss.spans || []) {
          result.spans.push({
            traceId: hex(s.traceId), spanId: hex(s.spanId), parentSpanId: hex(s.parentSpanId), name: s.name,
            kind: SpanKind.valuesById[s.kind || 0], startTimeUnixNano: str(s.startTimeUnixNano),
            endTimeUnixNano: str(s.endTimeUnixNano), attributes: attributes(s.attributes),
            status: s.status ? { code: StatusCode.valuesById[s.status.code || 0], message: s.status.message } : undefined,
          });
        }
      }
    }
  }
} catch (e) {
  process.stderr.write(`otlp_decode: ${e.message}\n`);
  process.exit(1);
}
process.stdout.write(JSON.stringify(result) + '\n');
