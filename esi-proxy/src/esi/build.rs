//! Builds the tree of a [`Template`] from the parser's well-nested [`Event`] stream: how a
//! whole document, or the events kept while a layout streamed, become the cached template.

use std::sync::Arc;

use super::ast::{Foreach, Function, Node, Template, When};
use super::event::Event;
use super::expr::Expr;

/// Builds the tree of a [`Template`] from a well-nested [`Event`] stream.
#[derive(Debug, Default)]
pub struct TemplateBuilder {
    root: Vec<Node>,
    stack: Vec<(Open, Vec<Node>)>,
}

#[derive(Debug)]
enum Open {
    Try {
        attempt: Vec<Node>,
        except: Vec<Node>,
    },
    Attempt,
    Except,
    Choose {
        whens: Vec<When>,
        otherwise: Option<Vec<Node>>,
    },
    When {
        test: Option<Expr>,
        source: Box<str>,
        match_name: Option<Box<str>>,
    },
    Otherwise,
    Inline {
        name: Box<str>,
        fetchable: bool,
    },
    Foreach {
        collection: Expr,
        source: Box<str>,
        item: Box<str>,
    },
    Function {
        name: Box<str>,
    },
}

// === impl TemplateBuilder ===

impl TemplateBuilder {
    /// Adds the next event. Events out of structure (which [`Parser`] never emits) are ignored.
    pub fn push(&mut self, event: Event) {
        match event {
            Event::Text(b) => self.current().push(Node::Text(b)),
            Event::Vars(s) => self.current().push(Node::Vars(s)),
            Event::Include(inc) => self.current().push(Node::Include(inc)),
            Event::Assign(a) => self.current().push(Node::Assign(a)),
            Event::Break => self.current().push(Node::Break),
            Event::Return(r) => self.current().push(Node::Return(r)),
            Event::Eval(inc) => self.current().push(Node::Eval(inc)),
            Event::ForeachStart {
                collection,
                source,
                item,
            } => self.open(Open::Foreach {
                collection,
                source,
                item,
            }),
            Event::FunctionStart { name } => self.open(Open::Function { name }),
            Event::TryStart => self.open(Open::Try {
                attempt: Vec::new(),
                except: Vec::new(),
            }),
            Event::AttemptStart => self.open(Open::Attempt),
            Event::ExceptStart => self.open(Open::Except),
            Event::ChooseStart => self.open(Open::Choose {
                whens: Vec::new(),
                otherwise: None,
            }),
            Event::WhenStart {
                test,
                source,
                match_name,
            } => self.open(Open::When {
                test,
                source,
                match_name,
            }),
            Event::OtherwiseStart => self.open(Open::Otherwise),
            Event::InlineStart { name, fetchable } => self.open(Open::Inline { name, fetchable }),
            Event::AttemptEnd
            | Event::ExceptEnd
            | Event::WhenEnd
            | Event::OtherwiseEnd
            | Event::TryEnd
            | Event::ChooseEnd
            | Event::InlineEnd
            | Event::ForeachEnd
            | Event::FunctionEnd => self.close(),
        }
    }

    /// The finished template (diagnostics are the parser's to add).
    pub fn finish(mut self) -> Template {
        while !self.stack.is_empty() {
            self.close();
        }
        Template {
            nodes: self.root,
            diagnostics: Vec::new(),
            problem_count: 0,
        }
    }

    fn current(&mut self) -> &mut Vec<Node> {
        match self.stack.last_mut() {
            Some((_, nodes)) => nodes,
            None => &mut self.root,
        }
    }

    fn open(&mut self, open: Open) {
        self.stack.push((open, Vec::new()));
    }

    fn close(&mut self) {
        let Some((open, body)) = self.stack.pop() else {
            return;
        };
        match open {
            Open::Try { attempt, except } => self.current().push(Node::Try { attempt, except }),
            Open::Choose { whens, otherwise } => {
                self.current().push(Node::Choose { whens, otherwise })
            }
            Open::Inline { name, fetchable } => self.current().push(Node::Inline {
                name,
                fetchable,
                body,
            }),
            Open::Foreach {
                collection,
                source,
                item,
            } => self.current().push(Node::Foreach(Foreach {
                collection,
                source,
                item,
                body,
            })),
            Open::Function { name } => self.current().push(Node::Function(Function {
                name,
                body: Arc::from(body),
            })),
            Open::Attempt => {
                if let Some((Open::Try { attempt, .. }, _)) = self.stack.last_mut() {
                    *attempt = body;
                }
            }
            Open::Except => {
                if let Some((Open::Try { except, .. }, _)) = self.stack.last_mut() {
                    *except = body;
                }
            }
            Open::When {
                test,
                source,
                match_name,
            } => {
                if let Some((Open::Choose { whens, .. }, _)) = self.stack.last_mut() {
                    whens.push(When {
                        test,
                        source,
                        match_name,
                        body,
                    });
                }
            }
            Open::Otherwise => {
                if let Some((Open::Choose { otherwise, .. }, _)) = self.stack.last_mut() {
                    *otherwise = Some(body);
                }
            }
        }
    }
}
