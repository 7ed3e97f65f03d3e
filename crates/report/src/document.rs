//! A small document model (headings, paragraphs, tables, preformatted text, charts) and
//! its two renderings: Markdown (charts as links to the SVG files beside it) and one
//! self-contained HTML page (charts inlined as SVG, styles inline, no external assets).

use std::fmt::Write;

use crate::plots::Rendered;

/// One block of the report.
#[derive(Debug, Clone)]
pub enum Block {
    /// A heading of level 1-3.
    Heading(u8, String),
    /// A paragraph of plain text.
    Para(String),
    /// A bulleted list of plain-text items.
    List(Vec<String>),
    /// Preformatted text (prompts).
    Pre(String),
    /// A table: header cells and rows of cells (plain text, may contain newlines).
    Table(Vec<String>, Vec<Vec<String>>),
    /// A chart written beside the document.
    Chart(Rendered),
}

/// An ordered list of blocks with a title.
#[derive(Debug, Clone, Default)]
pub struct Document {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Document {
    /// Appends a block.
    pub fn push(&mut self, b: Block) {
        self.blocks.push(b);
    }

    /// The Markdown rendering.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("# {}\n\n", md_inline(&self.title));
        for b in &self.blocks {
            match b {
                Block::Heading(level, text) => {
                    let hashes = "#".repeat(usize::from((*level).clamp(1, 3)) + 1);
                    let _ = writeln!(out, "{hashes} {}\n", md_inline(text));
                }
                Block::Para(text) => {
                    let _ = writeln!(out, "{}\n", md_inline(text));
                }
                Block::List(items) => {
                    for item in items {
                        let _ = writeln!(out, "- {}", md_inline(item));
                    }
                    out.push('\n');
                }
                Block::Pre(text) => {
                    let fence = if text.contains("```") { "~~~~" } else { "```" };
                    let _ = writeln!(out, "{fence}text\n{}\n{fence}\n", text.trim_end());
                }
                Block::Table(header, rows) => {
                    let cells =
                        |r: &[String]| r.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ");
                    let _ = writeln!(out, "| {} |", cells(header));
                    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                    for r in rows {
                        let _ = writeln!(out, "| {} |", cells(r));
                    }
                    out.push('\n');
                }
                Block::Chart(c) => {
                    let _ = writeln!(
                        out,
                        "![{}]({}.svg) ([PNG]({}.png))\n",
                        md_inline(&c.title),
                        c.stem,
                        c.stem
                    );
                }
            }
        }
        out
    }

    /// The self-contained HTML rendering.
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            html(&self.title),
            CSS,
            html(&self.title)
        );
        for b in &self.blocks {
            match b {
                Block::Heading(level, text) => {
                    let l = (*level).clamp(1, 3) + 1;
                    let _ = writeln!(out, "<h{l}>{}</h{l}>", html(text));
                }
                Block::Para(text) => {
                    let _ = writeln!(out, "<p>{}</p>", html(text));
                }
                Block::List(items) => {
                    out.push_str("<ul>\n");
                    for item in items {
                        let _ = writeln!(out, "<li>{}</li>", html(item));
                    }
                    out.push_str("</ul>\n");
                }
                Block::Pre(text) => {
                    let _ = writeln!(out, "<pre>{}</pre>", html(text.trim_end()));
                }
                Block::Table(header, rows) => {
                    out.push_str("<table>\n<tr>");
                    for h in header {
                        let _ = write!(out, "<th>{}</th>", html(h));
                    }
                    out.push_str("</tr>\n");
                    for r in rows {
                        out.push_str("<tr>");
                        for c in r {
                            let _ = write!(out, "<td>{}</td>", html(c));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</table>\n");
                }
                Block::Chart(c) => {
                    let _ = writeln!(
                        out,
                        "<figure>\n{}\n<figcaption>{}</figcaption>\n</figure>",
                        strip_xml_declaration(&c.svg),
                        html(&c.title)
                    );
                }
            }
        }
        out.push_str("</body>\n</html>\n");
        out
    }
}

const CSS: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}\
td{white-space:pre-wrap}th{background:#f3f3f3}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}\
figure{display:inline-block;margin:0.5em}figure svg{max-width:100%;height:auto}figcaption{text-align:center;font-size:90%}";

/// An SVG document inlined in HTML must not carry an XML declaration.
fn strip_xml_declaration(svg: &str) -> &str {
    match svg.strip_prefix("<?xml") {
        Some(rest) => rest.find("?>").map_or(svg, |i| rest[i + 2..].trim_start()),
        None => svg,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Escapes Markdown-significant characters in running text.
fn md_inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        // `>` only matters at the start of a line (block quote).
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '#' | '|')
            || (c == '>' && out.is_empty())
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A table cell: escaped, newlines as `<br>`.
fn md_cell(text: &str) -> String {
    md_inline(text.trim_end()).replace('\n', "<br>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Document {
        Document {
            title: "Run <demo>".into(),
            blocks: vec![
                Block::Heading(1, "Examples".into()),
                Block::Table(
                    vec!["SFT".into(), "Final".into()],
                    vec![vec!["a | b\nc".into(), "<script>".into()]],
                ),
                Block::Chart(Rendered {
                    stem: "kl".into(),
                    title: "KL".into(),
                    svg: "<?xml version=\"1.0\"?>\n<svg></svg>".into(),
                }),
            ],
        }
    }

    #[test]
    fn markdown_escapes_cells_and_links_charts() {
        let md = doc().to_markdown();
        assert!(md.starts_with("# Run \\<demo>\n"), "{md}");
        assert!(md.contains("| a \\| b<br>c | \\<script> |"), "{md}");
        assert!(md.contains("![KL](kl.svg) ([PNG](kl.png))"), "{md}");
    }

    #[test]
    fn html_is_escaped_and_inlines_svg() {
        let h = doc().to_html();
        assert!(h.contains("<td>&lt;script&gt;</td>"), "{h}");
        assert!(h.contains("<figure>\n<svg></svg>"), "{h}");
        assert!(!h.contains("<?xml"));
        assert!(!h.contains("src=") && !h.contains("href="));
    }
}
