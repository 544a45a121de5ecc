//! WeChat's message XML: `<xml><Name>value</Name>…</xml>`, read as real senders write it
//! and written as WeChat reads it.
//!
//! Reading keeps every element, in document order, known or not: an unknown element is
//! data somebody may need. Values may be CDATA or plain text, with whitespace around
//! them; plain text is trimmed, CDATA is kept verbatim. A DOCTYPE or an entity other than
//! the five predefined ones and character references is refused, never expanded.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use serde_json::{Map, Value};

/// How deep elements may nest. WeChat's deepest (`SendPicsInfo/PicList/item/PicMd5Sum`)
/// is four below the root.
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    #[error("XML is not well-formed: {0}")]
    Malformed(String),
    #[error("XML with a DOCTYPE is refused (imgate never expands DTDs or entities)")]
    Doctype,
    #[error("XML entity &{0}; is refused (only the five predefined entities and &#…; are read)")]
    Entity(String),
    #[error("XML has no root element")]
    Empty,
    #[error("XML nests deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("XML has content after its root element")]
    TrailingContent,
    #[error("XML contains a control character XML 1.0 does not allow (U+{0:04X})")]
    ControlCharacter(u32),
}

/// XML 1.0 allows tab, newline and carriage return, and no other C0 control character.
fn check_chars(s: &str) -> Result<(), XmlError> {
    match s.chars().find(|c| c.is_control() && (*c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r')) {
        Some(c) => Err(XmlError::ControlCharacter(c as u32)),
        None => Ok(()),
    }
}

/// quick-xml takes any run of bytes as a name; one like `A/` (from `<A//>`) would be
/// written back as XML that does not parse. Only letters, digits and `_-.:` pass.
fn check_name(name: &str) -> Result<(), XmlError> {
    let ok = name.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if ok { Ok(()) } else { Err(XmlError::Malformed(format!("{name:?} is not an element name"))) }
}

/// An element's value: text, or child elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum XmlValue {
    Text(String),
    Nested(Vec<(String, XmlValue)>),
}

/// A message: the root element's children in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XmlMessage {
    pub fields: Vec<(String, XmlValue)>,
}

impl XmlMessage {
    /// Parse a message. The root's name is not checked (`xml` in practice).
    pub fn parse(input: &str) -> Result<XmlMessage, XmlError> {
        check_chars(input)?;
        let mut reader = Reader::from_str(input);
        reader.config_mut().check_end_names = true;
        let mut tree = Tree::default();
        loop {
            let event = reader.read_event().map_err(|e| XmlError::Malformed(e.to_string()))?;
            match event {
                Event::Start(e) => tree.start(e.name().as_ref().to_owned())?,
                Event::Empty(e) => tree.empty(e.name().as_ref().to_owned())?,
                Event::End(_) => tree.end()?,
                Event::Text(t) => tree.text(&t.xml10_content())?,
                Event::CData(c) => tree.verbatim(&c.into_inner(), "CDATA")?,
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref() {
                        Ok(Some(c)) => {
                            let c = c.to_string();
                            check_chars(&c)?;
                            c
                        }
                        Ok(None) => resolve_predefined_entity(&r)
                            .ok_or_else(|| XmlError::Entity(r.to_string()))?
                            .to_owned(),
                        Err(e) => return Err(XmlError::Malformed(e.to_string())),
                    };
                    tree.verbatim(&resolved, "reference")?;
                }
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => return tree.finish(),
            }
        }
    }

    /// The text of the first top-level element called `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find_map(|(n, v)| match v {
            XmlValue::Text(t) if n == name => Some(t.as_str()),
            _ => None,
        })
    }

    /// Like [`get`](Self::get), but `None` for an empty value too.
    pub fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|s| !s.is_empty())
    }

    /// Add or replace a top-level text element.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let value = XmlValue::Text(value.into());
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name.to_owned(), value)),
        }
    }

    /// Write as WeChat does: `<xml>`, every text value in CDATA except numbers.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(64 + self.fields.len() * 48);
        out.push_str("<xml>");
        write_fields(&mut out, &self.fields);
        out.push_str("</xml>");
        out
    }
}

/// The document as it is read: the elements open now, and the root's fields once it
/// has closed.
#[derive(Default)]
struct Tree {
    open: Vec<Open>,
    root: Option<Vec<(String, XmlValue)>>,
}

impl Tree {
    fn start(&mut self, name: String) -> Result<(), XmlError> {
        if self.root.is_some() {
            return Err(XmlError::TrailingContent);
        }
        if self.open.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep);
        }
        check_name(&name)?;
        self.open.push(Open::new(name));
        Ok(())
    }

    fn empty(&mut self, name: String) -> Result<(), XmlError> {
        check_name(&name)?;
        match self.open.last_mut() {
            Some(top) => top.children.push((name, XmlValue::Text(String::new()))),
            None if self.root.is_none() => self.root = Some(Vec::new()),
            None => return Err(XmlError::TrailingContent),
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), XmlError> {
        let Some(open) = self.open.pop() else {
            return Err(XmlError::Malformed("unexpected end tag".into()));
        };
        match self.open.last_mut() {
            Some(parent) => {
                let name = open.name.clone();
                parent.children.push((name, open.into_value()));
            }
            None => self.root = Some(open.children),
        }
        Ok(())
    }

    /// Plain text: layout around the root, part of a value inside it.
    fn text(&mut self, s: &str) -> Result<(), XmlError> {
        match self.open.last_mut() {
            Some(top) => top.text.push_str(s),
            None if s.trim().is_empty() => {}
            None => return Err(XmlError::Malformed("text outside the root element".into())),
        }
        Ok(())
    }

    /// CDATA or a resolved reference (`what`): content, kept as it is.
    fn verbatim(&mut self, s: &str, what: &str) -> Result<(), XmlError> {
        match self.open.last_mut() {
            Some(top) => {
                top.push_verbatim(s);
                Ok(())
            }
            None => Err(XmlError::Malformed(format!("{what} outside the root element"))),
        }
    }

    fn finish(self) -> Result<XmlMessage, XmlError> {
        if !self.open.is_empty() {
            return Err(XmlError::Malformed("document ends inside an element".into()));
        }
        self.root.map(|fields| XmlMessage { fields }).ok_or(XmlError::Empty)
    }
}

/// An element being read. Plain text around the value is layout and gets trimmed; CDATA
/// and references are content and are kept, so only the text before the first and after
/// the last of them is trimmed.
struct Open {
    name: String,
    children: Vec<(String, XmlValue)>,
    text: String,
    verbatim: Option<(usize, usize)>,
}

impl Open {
    fn new(name: String) -> Open {
        Open { name, children: Vec::new(), text: String::new(), verbatim: None }
    }

    fn push_verbatim(&mut self, s: &str) {
        let start = self.text.len();
        self.text.push_str(s);
        let end = self.text.len();
        self.verbatim = Some(match self.verbatim {
            Some((first, _)) => (first, end),
            None => (start, end),
        });
    }

    fn into_value(self) -> XmlValue {
        if !self.children.is_empty() {
            return XmlValue::Nested(self.children);
        }
        let t = &self.text;
        let value = match self.verbatim {
            None => t.trim().to_owned(),
            Some((first, last)) => {
                let mut v = String::with_capacity(t.len());
                v.push_str(t[..first].trim_start());
                v.push_str(&t[first..last]);
                v.push_str(t[last..].trim_end());
                v
            }
        };
        XmlValue::Text(value)
    }
}

fn write_fields(out: &mut String, fields: &[(String, XmlValue)]) {
    for (name, value) in fields {
        out.push('<');
        out.push_str(name);
        out.push('>');
        match value {
            XmlValue::Text(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => out.push_str(t),
            XmlValue::Text(t) => write_cdata(out, t),
            XmlValue::Nested(children) => write_fields(out, children),
        }
        out.push_str("</");
        out.push_str(name);
        out.push('>');
    }
}

/// CDATA cannot hold `]]>`: close the section inside it and open a new one.
fn write_cdata(out: &mut String, text: &str) {
    out.push_str("<![CDATA[");
    out.push_str(&text.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]>");
}

impl XmlValue {
    /// JSON for a frame: text as a string; children as an object, repeated names as arrays.
    pub fn to_json(&self) -> Value {
        match self {
            XmlValue::Text(t) => Value::String(t.clone()),
            XmlValue::Nested(children) => fields_to_json(children),
        }
    }
}

/// JSON object of fields; a name that repeats becomes an array of its values.
pub fn fields_to_json<'a, I>(fields: I) -> Value
where
    I: IntoIterator<Item = &'a (String, XmlValue)>,
{
    let mut map = Map::new();
    for (name, value) in fields {
        let v = value.to_json();
        match map.get_mut(name) {
            Some(Value::Array(items)) => items.push(v),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, v]);
            }
            None => {
                map.insert(name.clone(), v);
            }
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(fields: &[(&str, &str)]) -> Vec<(String, XmlValue)> {
        fields.iter().map(|(n, v)| (n.to_string(), XmlValue::Text(v.to_string()))).collect()
    }

    fn check(input: &str, want: Result<Vec<(String, XmlValue)>, XmlError>) {
        let got = XmlMessage::parse(input).map(|m| m.fields);
        assert_eq!(got, want, "input {input:?}");
    }

    #[test]
    fn values_as_senders_write_them() {
        check("<xml><A><![CDATA[x y]]></A><B>12</B></xml>", Ok(text(&[("A", "x y"), ("B", "12")])));
        check(
            "<?xml version=\"1.0\"?>\n<xml>\n  <B>\n   12 \n </B>\n  <A>  <![CDATA[ keep ]]>  </A>\n</xml>\n",
            Ok(text(&[("B", "12"), ("A", " keep ")])),
        );
        check("<xml><A>a &amp; b &lt;c&gt; &#x4e2d;&#25991;</A></xml>", Ok(text(&[("A", "a & b <c> 中文")])));
        check("<xml><A/><B></B></xml>", Ok(text(&[("A", ""), ("B", "")])));
        check("<xml><!-- c --><A>1</A></xml>", Ok(text(&[("A", "1")])));
        check("<xml></xml>", Ok(vec![]));
        check(
            "<xml><P><item><M>1</M></item><item><M>2</M></item></P></xml>",
            Ok(vec![(
                "P".into(),
                XmlValue::Nested(vec![
                    ("item".into(), XmlValue::Nested(text(&[("M", "1")]))),
                    ("item".into(), XmlValue::Nested(text(&[("M", "2")]))),
                ]),
            )]),
        );
    }

    #[test]
    fn refused_inputs() {
        check(
            "<!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]><xml><A>&e;</A></xml>",
            Err(XmlError::Doctype),
        );
        check("<xml><A>&e;</A></xml>", Err(XmlError::Entity("e".into())));
        check("", Err(XmlError::Empty));
        check("<xml><A>a\u{1}b</A></xml>", Err(XmlError::ControlCharacter(1)));
        check("<xml><A>a&#27;b</A></xml>", Err(XmlError::ControlCharacter(27)));
        // XML normalises line ends.
        check("<xml><A>a\tb\r\nc</A></xml>", Ok(text(&[("A", "a\tb\nc")])));
        check("   ", Err(XmlError::Empty));
        check("<xml><A>1</A></xml><xml></xml>", Err(XmlError::TrailingContent));
        check("hello <xml></xml>", Err(XmlError::Malformed("text outside the root element".into())));
        assert!(matches!(XmlMessage::parse("<xml><A>1</B></xml>"), Err(XmlError::Malformed(_))));
        assert!(matches!(XmlMessage::parse("<xml><A>1"), Err(XmlError::Malformed(_))));
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(40), "</a>".repeat(40));
        assert_eq!(XmlMessage::parse(&deep), Err(XmlError::TooDeep));
    }

    #[test]
    fn writes_what_it_reads() {
        let mut m = XmlMessage::default();
        m.set("ToUserName", "gh_1");
        m.set("CreateTime", "1348831860");
        m.set("Content", "a ]]> b <&>");
        let xml = m.to_xml();
        assert_eq!(
            xml,
            "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><CreateTime>1348831860</CreateTime>\
             <Content><![CDATA[a ]]]]><![CDATA[> b <&>]]></Content></xml>"
        );
        assert_eq!(XmlMessage::parse(&xml).unwrap(), m);
    }

    #[test]
    fn repeated_names_become_arrays() {
        let m = XmlMessage::parse("<xml><P><item>1</item><item>2</item><x>3</x></P></xml>").unwrap();
        assert_eq!(m.fields[0].1.to_json(), serde_json::json!({"item": ["1", "2"], "x": "3"}));
    }
}
