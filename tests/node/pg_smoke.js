// Lockgate PostgreSQL engine smoke test with an independent client: node-postgres (`pg`).
//
// Environment: LOCKGATE_PG_PORT, LOCKGATE_RESOURCE (the database name = the resource name),
// LOCKGATE_TOKEN (password = a Lockgate token), LOCKGATE_CA_FILE (the gateway's CA; the
// certificate is verified, host name included), optional LOCKGATE_HOST.
// It runs a granted SELECT (simple protocol), a parameterised SELECT and a named prepared
// one (extended protocol), then a DROP TABLE that policy must deny, then a SELECT again on
// the same connection, and prints one JSON object on stdout. Exit 0 when it ran to the end
// (the caller judges the results), 1 on an unexpected failure. The token is never printed.
"use strict";

const fs = require("fs");
const { Client } = require("pg");

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

function failure(err) {
  return { code: err.code ?? null, severity: err.severity ?? null, message: err.message };
}

async function main() {
  const client = new Client({
    host: env("LOCKGATE_HOST", "127.0.0.1"),
    port: Number(env("LOCKGATE_PG_PORT")),
    database: env("LOCKGATE_RESOURCE"),
    user: "lockgate",
    password: env("LOCKGATE_TOKEN"),
    application_name: "node-pg-smoke",
    ssl: { ca: fs.readFileSync(env("LOCKGATE_CA_FILE")), rejectUnauthorized: true },
    connectionTimeoutMillis: 10000,
  });
  const out = {};
  await client.connect();
  try {
    const simple = await client.query("SELECT id, item FROM sales.orders ORDER BY id");
    out.simple = simple.rows;
    const param = await client.query("SELECT item FROM sales.orders WHERE id = $1", [2]);
    out.param = param.rows;
    const named = await client.query({
      name: "item_by_id",
      text: "SELECT item FROM sales.orders WHERE id = $1",
      values: [1],
    });
    out.named = named.rows;
    try {
      await client.query("DROP TABLE sales.orders");
      out.denied = null;
    } catch (err) {
      out.denied = failure(err);
    }
    const after = await client.query({
      name: "item_by_id",
      text: "SELECT item FROM sales.orders WHERE id = $1",
      values: [2],
    });
    out.after = after.rows;
  } finally {
    await client.end();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stderr.write(`node-postgres smoke failed: ${err.message}\n`);
  process.exit(1);
});
