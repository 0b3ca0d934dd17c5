// tiktoken-golden.js — OpenAI's tokenizer (npm `tiktoken`, WASM) as the
// reference for genaudit.tokens. Needs the package from tools/tiktoken-node.sh:
//   NODE_PATH=build/node-tiktoken/node_modules node tools/tiktoken-golden.js <mode> ...
// Modes:
//   golden <out.json>   writes the golden corpus (spec/fixtures/tokens/golden.json):
//                       each case's bytes (base64) and, per encoding, the count
//                       and ids (or a SHA-256 of the ids for long cases)
//   unicode <out.json>  every Unicode scalar value in context, per chunk of 32768:
//                       count and SHA-256 of the ids (spec/fixtures/tokens/unicode.json)
//   encode              reads JSON lines {"b64": "..."} on stdin, writes one line
//                       {"o200k_base": [ids], "cl100k_base": [ids]} per input
//   bench <file> <enc>  encodes the file's text repeatedly, prints
//                       "tiktoken_wasm <enc> MB/s <n> tokens <count>"
// Every input is bytes: they are decoded as UTF-8 with replacement (TextDecoder,
// WHATWG: one U+FFFD per maximal ill-formed subpart), then encode_ordinary()
// (special-token text is ordinary text).
"use strict";
const fs = require("fs");
const crypto = require("crypto");
const { get_encoding } = require("tiktoken");

const ENCODINGS = ["o200k_base", "cl100k_base"];
const encs = {};
for (const name of ENCODINGS) encs[name] = get_encoding(name);
const decoder = new TextDecoder("utf-8", { fatal: false });

function ids_of(buf, name) {
  return Array.from(encs[name].encode_ordinary(decoder.decode(buf)));
}

function cases() {
  const c = [];
  const add = (name, bytes) => c.push({ name, bytes: Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes, "utf8") });
  const rep = (s, n) => s.repeat(n);
  add("empty", "");
  add("english", "The quick brown fox jumps over the lazy dog. It's 3:45pm; they'll arrive at 10,000 ft.");
  add("contractions", "I'm you're he's we've they'd I'll DON'T WON'T She'S 'S 'll 'Ve can't");
  add("case_words", "HelloWorld iPhone McDonald's ALLCAPS camelCaseWord snake_case_word XMLHttpRequest");
  add("code", "function f(x) {\n  return x * 2; // double\n}\n\tif (a != b && c >= d) { print(\"ok\"); }\n");
  add("json", '{"role":"user","content":"Hi!\\n","n":[1,2,3.5e10],"ok":true,"null":null}');
  add("numbers", "0 1 12 123 1234 12345 123456 1234567 3.14159 -42 1e10 0x1F 1_000_000 ١٢٣ ²³ ½ Ⅻ");
  add("whitespace_mix", "a  b   c\t\td \n e\n\n\nf \r\n g\r\r\n  \n  h   \n\n  \t ");
  add("trailing_spaces", "end with spaces     ");
  add("leading_spaces", "     start with spaces");
  add("unicode_spaces", "a\u00a0b\u3000c\u2028d\u2029e\u0085f\u180eg\u200bh\u2003i\u202fj\u205fk\u1680l\u000bm\u000cn\u001co");
  add("newlines_only", "\n\n\n\n\r\n\r\n\n");
  add("punctuation", "!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( ))) /// \\\\\\ ||| ~~~ ``` ''' \"\"\" <<< >>> === +++");
  add("punct_slashes", "path/to/file.txt ../../up //comment /* block */ http://example.com/a/b?c=d&e=f#g");
  add("emoji", "I ❤️ Lua 🎉🎉 👨‍👩‍👧‍👦 👍🏽 🇫🇷🇯🇵 🏳️‍🌈 ☺︎ 🤖💬 🧑🏿‍🚀");
  add("combining", "e\u0301 n\u0303 a\u030a Z\u0351\u0352\u0357\u0310\u0305a\u0300\u0301\u0302\u0303l\u0334g\u0335o\u0336 \u0915\u093f \u0e01\u0e34");
  add("cjk", "我能吞下玻璃而不伤身体。日本語のテキストです。한국어 텍스트입니다。中文，标点！");
  add("scripts", "Привет мир! Γειά σου Κόσμε. مرحبا بالعالم. שלום עולם. नमस्ते दुनिया। สวัสดีชาวโลก ሰላም ዓለም");
  add("special_tokens_text", "<|endoftext|> <|fim_prefix|>x<|fim_middle|>y<|fim_suffix|> <|endofprompt|> <|im_start|>user");
  add("nul_and_controls", "a\u0000b\u0001c\u0007d\u001be[0m\u007f\u0080\u009f");
  add("mixed_letters_digits", "abc123def4567ghi89 A1B2C3 x86_64 mp3 h264 IPv6 2nd 3rd 21st");
  add("url_email", "Contact me at john.doe+tag@example.co.uk or https://www.example.org/path?q=1&r=%20x");
  add("long_word", rep("supercalifragilisticexpialidocious", 40));
  add("repeated_char_a_5000", rep("a", 5000));
  add("spaces_10000", rep(" ", 10000));
  add("spaces_10000_then_word", rep(" ", 10000) + "word");
  add("tabs_3000", rep("\t", 3000));
  add("newlines_3000", rep("\n", 3000));
  add("digits_10000", rep("7", 10000));
  add("digits_mixed_3001", rep("1234567890", 300) + "1");
  add("punct_run_10000", rep("!", 10000));
  add("dashes_5000", rep("-", 5000));
  add("equals_and_stars", rep("=", 777) + rep("*", 333) + rep("#", 555));
  add("emoji_run_2000", rep("🎉", 2000));
  add("cjk_run_3000", rep("的", 3000));
  add("combining_run_2000", "a" + rep("\u0301", 2000));
  add("mixed_run", rep("ab ", 1000) + rep(" \n", 500) + rep("1a!", 400));
  // ill-formed UTF-8
  add("invalid_lone_continuation", Buffer.from([0x61, 0x80, 0x62, 0xbf, 0x63]));
  add("invalid_truncated", Buffer.from([0x61, 0xe2, 0x82, 0x20, 0xf0, 0x9f, 0x98, 0x41, 0xc3]));
  add("invalid_overlong", Buffer.from([0xc0, 0xaf, 0xe0, 0x80, 0xaf, 0xf0, 0x80, 0x80, 0xaf, 0x41]));
  add("invalid_surrogates", Buffer.from([0xed, 0xa0, 0x80, 0xed, 0xbf, 0xbf, 0x20, 0x78]));
  add("invalid_high_bytes", Buffer.from([0xf5, 0xf8, 0xfc, 0xfe, 0xff, 0x20, 0xf4, 0x90, 0x80, 0x80, 0x7a]));
  add("invalid_mixed_text", Buffer.concat([Buffer.from("héllo "), Buffer.from([0xff, 0xfe]), Buffer.from(" wörld "),
    Buffer.from([0xe4, 0xbd]), Buffer.from("好 end")]));
  { const b = Buffer.alloc(256); for (let i = 0; i < 256; i++) b[i] = i; add("all_bytes", b); }
  { const b = Buffer.alloc(1024); let x = 12345; for (let i = 0; i < b.length; i++) { x = (x * 1103515245 + 12345) >>> 0; b[i] = x >>> 24; } add("random_bytes_1k", b); }
  return c;
}

function golden(out) {
  const res = [];
  for (const k of cases()) {
    const rec = { name: k.name, b64: k.bytes.toString("base64") };
    for (const name of ENCODINGS) {
      const ids = ids_of(k.bytes, name);
      const e = { count: ids.length };
      if (ids.length <= 400) e.ids = ids;
      else e.ids_sha256 = crypto.createHash("sha256").update(ids.join(",")).digest("hex");
      rec[name] = e;
    }
    res.push(rec);
  }
  const lines = res.map((r) => "  " + JSON.stringify(r));
  fs.writeFileSync(out, "[\n" + lines.join(",\n") + "\n]\n");
  console.error(`wrote ${res.length} cases to ${out}`);
}

// Every Unicode scalar value in contexts that tell letters (contractions),
// o200k's upper/lower split and digit runs apart, in chunks of 32768 values:
// catches a Unicode-table difference between PCRE2 and Rust's regex.
const SWEEP_CHUNK = 32768;
function sweep_text(first, last) {
  const parts = [];
  for (let cp = first; cp <= last; cp++) {
    if (cp >= 0xd800 && cp <= 0xdfff) continue;
    const ch = String.fromCodePoint(cp);
    parts.push(ch + "'s a" + ch + "A 1" + ch + ch + "1 ");
  }
  return Buffer.from(parts.join(""), "utf8");
}
function unicode(out) {
  const res = [];
  for (let first = 0; first <= 0x10ffff; first += SWEEP_CHUNK) {
    const last = Math.min(0x10ffff, first + SWEEP_CHUNK - 1);
    const buf = sweep_text(first, last);
    const rec = { first, last, bytes: buf.length };
    for (const name of ENCODINGS) {
      const ids = ids_of(buf, name);
      rec[name] = { count: ids.length, ids_sha256: crypto.createHash("sha256").update(ids.join(",")).digest("hex") };
    }
    res.push(rec);
  }
  fs.writeFileSync(out, "[\n" + res.map((r) => "  " + JSON.stringify(r)).join(",\n") + "\n]\n");
  console.error(`wrote ${res.length} chunks to ${out}`);
}

function encode_lines() {
  const input = fs.readFileSync(0, "utf8");
  const out = [];
  for (const line of input.split("\n")) {
    if (line === "") continue;
    const buf = Buffer.from(JSON.parse(line).b64, "base64");
    const r = {};
    for (const name of ENCODINGS) r[name] = ids_of(buf, name);
    out.push(JSON.stringify(r));
  }
  process.stdout.write(out.join("\n") + "\n");
}

function bench(file, name) {
  const text = decoder.decode(fs.readFileSync(file));
  const mb = Buffer.byteLength(text, "utf8") / 1e6;
  const enc = encs[name];
  let count = enc.encode_ordinary(text).length; // warm-up
  let runs = 0;
  const t0 = process.hrtime.bigint();
  let el = 0;
  while (runs < 2 || el < 2.0) {
    count = enc.encode_ordinary(text).length;
    runs++;
    el = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  console.log(`tiktoken_wasm ${name} MB/s ${(mb * runs / el).toFixed(3)} tokens ${count}`);
}

const mode = process.argv[2];
if (mode === "golden") golden(process.argv[3]);
else if (mode === "unicode") unicode(process.argv[3]);
else if (mode === "encode") encode_lines();
else if (mode === "bench") bench(process.argv[3], process.argv[4]);
else {
  console.error("usage: node tools/tiktoken-golden.js golden <out.json> | unicode <out.json> | encode | bench <file> <encoding>");
  process.exit(2);
}
for (const name of ENCODINGS) encs[name].free();
