// What an ELF shared library needs from the machine that loads it, read from the file (scripts/release/prebuilt.ts writes it
// into each prebuilt library's manifest): the DT_NEEDED libraries and the newest symbol version per library and
// prefix (GLIBC_2.34, GLIBCXX_3.4.29 ...). ELF64 little-endian only: the platforms we ship.
import type { ElfNeeds } from "../../ffi/prebuilt.ts";
import { compareVersions } from "../../doctor/rules/common.ts";

const SHT_DYNAMIC = 6;
const SHT_GNU_VERNEED = 0x6ffffffe;
const DT_NEEDED = 1n;

/**
 * The shared libraries and symbol versions an ELF64 little-endian shared object needs. Every offset is checked
 * against the file: a truncated or hostile file gives an Error, never a read out of bounds or a huge loop.
 */
export function readElfNeeds(bytes: Uint8Array): ElfNeeds {
  const bad = (why: string) => new Error(`not a readable ELF64 shared library: ${why}`);
  if (bytes.length < 64 || bytes[0] !== 0x7f || bytes[1] !== 0x45 || bytes[2] !== 0x4c || bytes[3] !== 0x46) {
    throw bad("no ELF magic");
  }
  if (bytes[4] !== 2 || bytes[5] !== 1) throw bad("not 64-bit little-endian");
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const u64 = (off: number) => {
    if (off < 0 || off + 8 > bytes.length) throw bad(`offset ${off} past the end`);
    const v = dv.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`value at ${off} too large`);
    return Number(v);
  };
  const u32 = (off: number) => {
    if (off < 0 || off + 4 > bytes.length) throw bad(`offset ${off} past the end`);
    return dv.getUint32(off, true);
  };
  const u16 = (off: number) => {
    if (off < 0 || off + 2 > bytes.length) throw bad(`offset ${off} past the end`);
    return dv.getUint16(off, true);
  };
  const shoff = u64(0x28), shentsize = u16(0x3a), shnum = u16(0x3c);
  if (shentsize < 64 || shoff + shnum * shentsize > bytes.length) throw bad("section headers outside the file");
  const sections = Array.from({ length: shnum }, (_, i) => {
    const h = shoff + i * shentsize;
    return { type: u32(h + 4), offset: u64(h + 0x18), size: u64(h + 0x20), link: u32(h + 0x28), info: u32(h + 0x2c) };
  });
  // The sections read below must lie inside the file (a .bss-like section may not, but none of those is read).
  const inFile = <S extends { offset: number; size: number }>(s: S): S => {
    if (s.offset + s.size > bytes.length) throw bad("a section reaches past the end of the file");
    return s;
  };
  const stringAt = (strtab: number, off: number) => {
    const s = sections[strtab] && inFile(sections[strtab]);
    if (!s || off >= s.size) throw bad("string outside its table");
    const start = s.offset + off;
    const end = bytes.indexOf(0, start);
    if (end < 0 || end > s.offset + s.size) throw bad("unterminated string");
    return new TextDecoder().decode(bytes.subarray(start, end));
  };

  const libraries: string[] = [];
  for (const s of sections.filter((x) => x.type === SHT_DYNAMIC).map(inFile)) {
    for (let off = s.offset; off + 16 <= s.offset + s.size; off += 16) {
      const tag = dv.getBigInt64(off, true);
      if (tag === 0n) break;
      if (tag === DT_NEEDED) libraries.push(stringAt(s.link, u64(off + 8)));
    }
  }

  // Newest version per (library, prefix): GLIBC_2.34 beats GLIBC_2.2.5; GLIBCXX and CXXABI are kept apart.
  const newest = new Map<string, Map<string, string>>();
  for (const s of sections.filter((x) => x.type === SHT_GNU_VERNEED).map(inFile)) {
    let off = s.offset;
    for (let n = 0; n < s.info; n++) {
      const count = u16(off + 2), file = stringAt(s.link, u32(off + 4)), aux = u32(off + 8), next = u32(off + 12);
      let a = off + aux;
      for (let j = 0; j < count; j++) {
        const name = stringAt(s.link, u32(a + 8));
        const m = /^([A-Z_]+?)_(\d+(?:\.\d+)*)$/.exec(name);
        if (m) {
          const perLib = newest.get(file) ?? new Map<string, string>();
          const old = perLib.get(m[1]);
          if (!old || compareVersions(m[2], old.slice(m[1].length + 1)) > 0) perLib.set(m[1], name);
          newest.set(file, perLib);
        }
        const step = u32(a + 12);
        if (step === 0) break;
        a += step;
      }
      if (next === 0) break;
      off += next;
    }
  }
  const symbolVersions: Record<string, string[]> = {};
  let glibc: string | null = null;
  for (const [file, perLib] of [...newest].sort(([a], [b]) => a.localeCompare(b))) {
    symbolVersions[file] = [...perLib.values()].sort();
    const g = perLib.get("GLIBC")?.slice("GLIBC_".length);
    if (g && (!glibc || compareVersions(g, glibc) > 0)) glibc = g;
  }
  return { glibc, symbol_versions: symbolVersions, libraries };
}
