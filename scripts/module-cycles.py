#!/usr/bin/env python3
"""Fails when two top-level modules of src/ import each other, directly or through others.

Reads `crate::MODULE` uses in non-test code (a file's `#[cfg(test)]` module, `fake.rs`, the
kube mocks and `tests.rs` files are test code; comments are skipped). Run by .ci/run, so the
layering ARCHITECTURE.md describes (drivers -> the run -> seams and state) cannot drift back.
Usage: scripts/module-cycles.py [SRC_DIR]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), '..', 'src')
deps = {}
for folder, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.rs'):
            continue
        path = os.path.join(folder, f)
        rel = os.path.relpath(path, root)
        top = rel.split(os.sep)[0].removesuffix('.rs')
        if top in ('lib', 'main'):
            continue
        if '/mock' in path or f in ('fake.rs', 'tests.rs', 'testing.rs'):
            continue
        text = open(path, encoding='utf-8').read()
        cut = text.find('#[cfg(test)]')
        if cut >= 0:
            text = text[:cut]
        text = '\n'.join(l for l in text.splitlines() if not l.strip().startswith('//'))
        used = set(re.findall(r'crate::([a-z_]+)', text))
        for group in re.findall(r'use crate::\{([^}]*)\}', text, re.S):
            used.update(re.findall(r'(?:^|,)\s*([a-z_]+)', group))
        for d in used - {top}:
            deps.setdefault(top, {}).setdefault(d, set()).add(rel)


def reaches(a, b, seen):
    for d in deps.get(a, {}):
        if d == b or (d not in seen and (seen.add(d) or reaches(d, b, seen))):
            return True
    return False


cycles = [(a, b) for a in sorted(deps) for b in sorted(deps[a]) if reaches(b, a, set())]
for a, b in cycles:
    print(f"module cycle: {a} -> {b} (in {', '.join(sorted(deps[a][b]))}) and {b} leads back to {a}")
if cycles:
    sys.exit(1)
print(f"no import cycle between the {len(deps)} top-level modules of src/")
