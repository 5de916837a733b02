#!/usr/bin/env python3
"""Check the links of the built docs (docs/book, HTML) and of Markdown files outside the book.

    python3 scripts/check_links.py docs/book README.md docker/README.md

Every relative link must lead to a file that exists, and a #fragment to an element with that
id in the target page (mdBook gives every heading one). Links that leave the book (e.g. to
deploy/ files in the repository) are resolved on disk from the page's place: docs/book/<page>
sits as deep as docs/src/<page>, so the same relative path reaches the repository from both.
External links (http, https, mailto) are not fetched: CI has no network beyond package
registries, and a checker that passes or fails with the weather is worse than none.

Exit status 1 when any link is broken, listing each with its page.
"""

import html.parser
import os
import re
import sys
import urllib.parse

EXTERNAL = ("http://", "https://", "mailto:", "ftp://", "data:", "javascript:")


class Page(html.parser.HTMLParser):
    """The ids and the links (href, src) of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "link" and attrs.get("rel") == "preload"):
                self.links.append(attrs[key])


_pages = {}


def parse_html(path):
    if path not in _pages:
        page = Page()
        with open(path, encoding="utf-8") as f:
            page.feed(f.read())
        _pages[path] = page
    return _pages[path]


def markdown_ids(path):
    """GitHub-style heading anchors of a Markdown file."""
    ids = set()
    fence = False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("```"):
                fence = not fence
            m = None if fence else re.match(r"#+\s+(.*)", line)
            if m:
                text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
                ids.add(text.replace(" ", "-"))
    return ids


def check_target(source, link, target_ids, root=None):
    """None when `link` from file `source` is fine, else why not. `root` is where a link
    starting with / leads (the book's root; mdBook's 404 page links there)."""
    if link.startswith(EXTERNAL) or link.startswith("#!"):
        return None
    parsed = urllib.parse.urlsplit(link)
    path = urllib.parse.unquote(parsed.path)
    if path.startswith("/") and root:
        target = os.path.normpath(os.path.join(root, path.lstrip("/")))
        if os.path.isdir(target):
            target = os.path.join(target, "index.html")
    elif path:
        target = os.path.normpath(os.path.join(os.path.dirname(source), path))
        if os.path.isdir(target):
            target = os.path.join(target, "index.html")
    else:
        target = source
    if not os.path.exists(target):
        return "no such file: " + target
    if parsed.fragment:
        fragment = urllib.parse.unquote(parsed.fragment)
        if fragment not in target_ids(target):
            return "no #" + fragment + " in " + target
    return None


def ids_of(path):
    if path.endswith(".html"):
        return parse_html(path).ids
    if path.endswith(".md"):
        return markdown_ids(path)
    return set()


def book_links(book):
    for root, _, files in os.walk(book):
        for name in sorted(files):
            # print.html repeats every page with rewritten links; the pages themselves are checked.
            if name.endswith(".html") and name != "print.html":
                path = os.path.join(root, name)
                for link in parse_html(path).links:
                    yield path, link


def markdown_links(path):
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        yield path, m.group(1)


def main(args):
    if not args:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    broken = []
    checked = 0
    for arg in args:
        links = book_links(arg) if os.path.isdir(arg) else markdown_links(arg)
        root = arg if os.path.isdir(arg) else None
        for source, link in links:
            checked += 1
            problem = check_target(source, link, ids_of, root)
            if problem:
                broken.append(f"{source}: {link}: {problem}")
    for line in broken:
        print("broken link:", line, file=sys.stderr)
    print(f"check_links: {checked} links checked, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
