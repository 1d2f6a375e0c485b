// Lockgate CQL engine smoke test with an independent client: the Node.js cassandra-driver.
//
// Environment: LOCKGATE_CQL_PORT, LOCKGATE_RESOURCE (SASL user = the resource name),
// LOCKGATE_TOKEN (password = a Lockgate token), LOCKGATE_KEYSPACE, optional LOCKGATE_HOST.
// It connects, runs a prepared INSERT and a SELECT, then a DROP TABLE that policy must deny,
// and prints one JSON object on stdout. Exit 0 when it ran to the end (the caller judges the
// results), 1 on an unexpected failure. The token is never printed.
"use strict";

const cassandra = require("cassandra-driver");

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

async function main() {
  const keyspace = env("LOCKGATE_KEYSPACE", "ks");
  const client = new cassandra.Client({
    contactPoints: [env("LOCKGATE_HOST", "127.0.0.1")],
    localDataCenter: env("LOCKGATE_LOCAL_DC", "datacenter1"),
    protocolOptions: { port: Number(env("LOCKGATE_CQL_PORT")), maxVersion: 4 },
    authProvider: new cassandra.auth.PlainTextAuthProvider(
      env("LOCKGATE_RESOURCE"),
      env("LOCKGATE_TOKEN"),
    ),
    keyspace,
    socketOptions: { connectTimeout: 5000, readTimeout: 10000 },
  });
  const out = { keyspace };
  await client.connect();
  try {
    out.protocolVersion = client.controlConnection.protocolVersion;
    out.hosts = client.hosts.values().map((h) => h.address);
    await client.execute(
      "INSERT INTO orders (id, item) VALUES (?, ?)",
      [4242, "from-node"],
      { prepare: true },
    );
    const result = await client.execute(
      "SELECT id, item FROM orders WHERE id = ?",
      [4242],
      { prepare: true },
    );
    out.rows = result.rows.map((r) => ({ id: r.id, item: r.item }));
    try {
      await client.execute(`DROP TABLE ${keyspace}.orders`);
      out.denied = null;
    } catch (err) {
      out.denied = { code: err.code ?? null, name: err.name, message: err.message };
    }
  } finally {
    await client.shutdown();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stderr.write(`smoke failed: ${err.name}: ${err.message}\n`);
  process.exit(1);
});
