#!/usr/bin/env node
// Compile contracts/TestToken.sol with the npm solc-js compiler (offline, pinned in package.json)
// and write contracts/TestToken.json (abi + bytecode + how it was compiled).
//
//   node contracts/build.js            write the artifact
//   node contracts/build.js --stdout   print the artifact instead (tests compare it with the file)
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const SOURCE = "TestToken.sol";
const CONTRACT = "TestToken";
// Fixed settings so that a fresh compile reproduces the checked-in bytecode byte for byte.
const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: "cancun",
  metadata: { bytecodeHash: "none" },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
};

function build() {
  const here = __dirname;
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: fs.readFileSync(path.join(here, SOURCE), "utf8") } },
    settings: SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) {
    throw new Error(errors.map((e) => e.formattedMessage).join("\n"));
  }
  const c = output.contracts[SOURCE][CONTRACT];
  return {
    contractName: CONTRACT,
    sourceName: `contracts/${SOURCE}`,
    compiler: { name: "solc-js (npm solc)", version: solc.version() },
    settings: { optimizer: SETTINGS.optimizer, evmVersion: SETTINGS.evmVersion, metadata: SETTINGS.metadata },
    abi: c.abi,
    bytecode: "0x" + c.evm.bytecode.object,
  };
}

const text = JSON.stringify(build(), null, 2) + "\n";
if (process.argv.includes("--stdout")) {
  process.stdout.write(text);
} else {
  fs.writeFileSync(path.join(__dirname, `${CONTRACT}.json`), text);
  console.log(`wrote contracts/${CONTRACT}.json`);
}
