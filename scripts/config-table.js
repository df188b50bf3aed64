#!/usr/bin/env node
// Writes README.md's configuration table from SETTINGS (functions/src/config.ts, compiled), the one
// list of settings: each row's variable, default, allowed values (its parser's own text) and meaning.
// functions/test/config.test.ts fails when the two disagree. Run: npm run docs:config
// (or `node scripts/config-table.js OTHER.md` to write another copy of the README).
const fs = require('fs');
const path = require('path');
const { settingsTable } = require('../functions/build/config');

const readme = process.argv[2] ?? path.join(__dirname, '..', 'README.md');
const text = fs.readFileSync(readme, 'utf8');
const marker = '<!-- config-table: checked by functions/test/config.test.ts against SETTINGS in config.ts -->';
const end = '<!-- /config-table -->';
if (text.split(marker).length !== 2 || text.split(end).length !== 2) throw new Error(`${readme}: expected one ${marker} and one ${end}`);
const [before, rest] = text.split(marker);
const after = rest.split(end)[1];
const table = settingsTable();
fs.writeFileSync(readme, `${before}${marker}\n${table.join('\n')}\n${end}${after}`);
console.log(`${readme}: configuration table written (${table.length - 2} settings)`);
