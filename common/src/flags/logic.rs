//! JsonLogic compiled into a tree of [`Node`]s, and its evaluator.
//!
//! Semantics follow `json-logic-engine` 5.x in compiled mode, the engine that
//! `@openfeature/flagd-core` runs, plus flagd's four custom operators.

use super::cbor;
use super::jsval::{
    append_js_string, js_cmp, loose_eq, strict_eq, strict_eq_value, to_js_string, Val,
};
use super::murmur::murmur3_32;
use super::Bucketing;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Deepest nesting of operators accepted in a rule (counted through `$ref`).
pub const MAX_RULE_DEPTH: usize = 64;

/// Default budget of compiled nodes for a whole definition, and for what one
/// `map`/`filter`/`all`/`some`/`none`/`reduce` body expands to through
/// `$ref` (such a body is evaluated once per element, so its shared
/// evaluators are not memoised). A 1 MiB definition compiles to fewer than
/// 600,000 nodes.
pub const MAX_COMPILED_NODES: u64 = 1_000_000;

/// An evaluation failure; flagd-core reports these as `GENERAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogicError(pub &'static str);

type R<'v> = Result<Val<'v>, LogicError>;

const NAN: LogicError = LogicError("arithmetic or comparison on a value that is not a number");
const INVALID_ARGS: LogicError = LogicError("invalid arguments");
const NOT_ITERABLE: LogicError = LogicError("value is not an array");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    StrictEq,
    Ne,
    StrictNe,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IterOp {
    Map,
    Filter,
    All,
    Some,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarKind {
    Path,
    /// `$flagd.flagKey` (at the top scope)
    FlagKey,
    /// `$flagd.timestamp` (at the top scope)
    Timestamp,
    /// `""`/`null`/`[]`: the whole data
    Whole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SemVerOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Caret,
    Tilde,
}

impl SemVerOp {
    fn parse(s: &str) -> Option<SemVerOp> {
        Some(match s {
            "=" => SemVerOp::Eq,
            "!=" => SemVerOp::Ne,
            "<" => SemVerOp::Lt,
            "<=" => SemVerOp::Le,
            ">" => SemVerOp::Gt,
            ">=" => SemVerOp::Ge,
            "^" => SemVerOp::Caret,
            "~" => SemVerOp::Tilde,
            _ => return None,
        })
    }
}

/// Arguments of an eagerly evaluated operator: a literal list, or one
/// expression whose value (an array, or a single value) is the list.
#[derive(Debug)]
pub(crate) enum Args {
    List(Vec<Node>),
    Spread(Box<Node>),
}

#[derive(Debug)]
pub(crate) enum Node {
    Const(Value),
    Array(Vec<Node>),
    Var {
        path: Box<[Box<str>]>,
        kind: VarKind,
        default: Option<Box<Node>>,
    },
    VarDyn {
        key: Box<Node>,
        default: Option<Box<Node>>,
    },
    Missing(Args),
    MissingSome(Box<Node>, Args),
    If(Vec<Node>),
    Cmp(CmpOp, Vec<Node>),
    Not(Box<Node>),
    NotNot(Box<Node>),
    Or(Vec<Node>),
    And(Vec<Node>),
    Arith(ArithOp, Args),
    MinMax(bool, Args),
    Cat(Args),
    Substr(Args),
    In(Args),
    Merge(Args),
    Iter(IterOp, Box<Node>, Box<Node>),
    Reduce(Box<Node>, Box<Node>, Option<Box<Node>>),
    StrCmp(bool, Args),
    SemVer(Args),
    Fractional(Box<Fractional>),
    /// A `$ref` to a shared evaluator, compiled once for the whole set.
    Ref(Arc<RefTarget>),
}

/// A compiled `$evaluators` entry, shared by every rule that refers to it.
#[derive(Debug)]
pub(crate) struct RefTarget {
    /// Index of its memo slot in an evaluation (see `Env::refs`).
    id: usize,
    node: Node,
    /// Nesting depth of `node`, `$ref`s included.
    height: usize,
    /// Size of `node` with every `$ref` expanded (saturating).
    expanded: u64,
}

/// Sizes of a compiled rule.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Stats {
    /// Nodes of this rule, a `$ref` counting 1 (its evaluator is counted once
    /// for the set).
    pub nodes: u64,
    pub height: usize,
    /// Nodes with every `$ref` expanded (saturating).
    pub expanded: u64,
    /// The largest expanded size of an iteration body.
    pub max_body_expanded: u64,
}

impl Node {
    fn each_child<'a>(&'a self, f: &mut dyn FnMut(&'a Node)) {
        fn args<'a>(a: &'a Args, f: &mut dyn FnMut(&'a Node)) {
            match a {
                Args::List(l) => {
                    for n in l {
                        f(n)
                    }
                }
                Args::Spread(n) => f(n),
            }
        }
        match self {
            Node::Const(_) | Node::Ref(_) => {}
            Node::Array(l) | Node::If(l) | Node::Cmp(_, l) | Node::Or(l) | Node::And(l) => {
                for n in l {
                    f(n)
                }
            }
            Node::Var { default, .. } => {
                if let Some(n) = default {
                    f(n)
                }
            }
            Node::VarDyn { key, default } => {
                f(key);
                if let Some(n) = default {
                    f(n)
                };
            }
            Node::Missing(a)
            | Node::Arith(_, a)
            | Node::MinMax(_, a)
            | Node::Cat(a)
            | Node::Substr(a)
            | Node::In(a)
            | Node::Merge(a)
            | Node::StrCmp(_, a)
            | Node::SemVer(a) => args(a, f),
            Node::MissingSome(n, a) => {
                f(n);
                args(a, f);
            }
            Node::Not(n) | Node::NotNot(n) => f(n),
            Node::Iter(_, s, m) => {
                f(s);
                f(m);
            }
            Node::Reduce(s, m, i) => {
                f(s);
                f(m);
                if let Some(n) = i {
                    f(n)
                }
            }
            Node::Fractional(fr) => {
                if let Some(n) = &fr.by {
                    f(n)
                }
                match &fr.buckets {
                    Buckets::Static(..) | Buckets::Invalid => {}
                    Buckets::Dynamic(l) => {
                        for n in l {
                            f(n)
                        }
                    }
                    Buckets::Spread(n) => f(n),
                }
            }
        }
    }

    /// Whether evaluating this rule can meet one shared evaluator more than
    /// once (then its value is memoised per evaluation; otherwise the memo
    /// would only cost an allocation). Visits each evaluator at most once.
    pub(crate) fn meets_a_ref_twice(&self) -> bool {
        fn walk(n: &Node, seen: &mut Vec<usize>) -> bool {
            if let Node::Ref(t) = n {
                if seen.contains(&t.id) {
                    return true;
                }
                seen.push(t.id);
                return walk(&t.node, seen);
            }
            let mut twice = false;
            n.each_child(&mut |c| twice = twice || walk(c, seen));
            twice
        }
        walk(self, &mut Vec::new())
    }

    /// Sizes of this rule (recursion bounded by the rule depth).
    pub(crate) fn stats(&self) -> Stats {
        if let Node::Ref(t) = self {
            return Stats {
                nodes: 1,
                height: 1 + t.height,
                expanded: 1u64.saturating_add(t.expanded),
                max_body_expanded: 0,
            };
        }
        let mut st = Stats {
            nodes: 1,
            height: 1,
            expanded: 1,
            max_body_expanded: 0,
        };
        let body = match self {
            Node::Iter(_, _, m) | Node::Reduce(_, m, _) => Some(&**m as *const Node),
            _ => None,
        };
        self.each_child(&mut |c| {
            let cs = c.stats();
            st.nodes = st.nodes.saturating_add(cs.nodes);
            st.height = st.height.max(1 + cs.height);
            st.expanded = st.expanded.saturating_add(cs.expanded);
            st.max_body_expanded = st.max_body_expanded.max(cs.max_body_expanded);
            if body == Some(c as *const Node) {
                st.max_body_expanded = st.max_body_expanded.max(cs.expanded);
            }
        });
        st
    }
}

/// The `$evaluators` of one definition, each compiled once, on first use.
pub(crate) struct RefTable<'d> {
    defs: Option<&'d Map<String, Value>>,
    /// `None` while the evaluator is being compiled (a cycle).
    slots: HashMap<&'d str, Option<Resolved>>,
    /// Evaluators being compiled, outermost first.
    stack: Vec<&'d str>,
    bucketing: Bucketing,
    /// Each evaluator's own problems, in compile order: name, refusals,
    /// parse errors, warnings.
    pub reports: Vec<EvaluatorReport>,
    /// Nodes of all evaluators together (each counted once).
    pub nodes: u64,
}

/// A compiled evaluator and its parse errors (which make every flag that
/// refers to it answer `PARSE_ERROR`).
type Resolved = (Arc<RefTarget>, Vec<String>);

pub(crate) struct EvaluatorReport {
    pub name: String,
    pub fatal: Vec<String>,
    pub parse_errors: Vec<String>,
    pub warnings: Vec<String>,
}

pub(crate) type Refs<'d> = Rc<RefCell<RefTable<'d>>>;

impl<'d> RefTable<'d> {
    pub(crate) fn new(defs: Option<&'d Map<String, Value>>, bucketing: Bucketing) -> Refs<'d> {
        Rc::new(RefCell::new(RefTable {
            defs,
            slots: HashMap::new(),
            stack: Vec::new(),
            bucketing,
            reports: Vec::new(),
            nodes: 0,
        }))
    }

    /// Compiles every evaluator (used or not) once.
    pub(crate) fn compile_all(refs: &Refs<'d>) {
        let names: Vec<&'d String> = refs
            .borrow()
            .defs
            .map_or_else(Vec::new, |d| d.keys().collect());
        for name in names {
            let mut c = Compiler::new(refs.clone());
            let _ = c.target(name);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Fractional {
    /// The bucketing expression; `None` means `flagKey + targetingKey`.
    by: Option<Node>,
    buckets: Buckets,
    bucketing: Bucketing,
}

#[derive(Debug)]
enum Buckets {
    /// Literal buckets, checked at compile time: (variant, weight) and total.
    Static(Vec<(Value, u64)>, u64),
    Dynamic(Vec<Node>),
    /// Literal buckets flagd refuses at evaluation time: always `null`.
    Invalid,
    /// A non-array argument, evaluated as a whole.
    Spread(Node),
}

const OPERATORS: &[&str] = &[
    "var",
    "missing",
    "missing_some",
    "if",
    "?:",
    "==",
    "===",
    "!=",
    "!==",
    "!",
    "!!",
    "or",
    "and",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "min",
    "max",
    "cat",
    "substr",
    "in",
    "merge",
    "map",
    "filter",
    "reduce",
    "all",
    "some",
    "none",
    "fractional",
    "starts_with",
    "ends_with",
    "sem_ver",
];

// ---------------------------------------------------------------- compiling

pub(crate) struct Compiler<'d> {
    refs: Refs<'d>,
    /// Variant names of the flag being compiled (checks literal fractional buckets).
    pub variants: Option<Vec<&'d str>>,
    /// How `fractional` hashes.
    pub bucketing: Bucketing,
    /// Problems that refuse the whole definition (our limits).
    pub fatal: Vec<String>,
    /// Problems flagd loads but cannot run: the flag answers `PARSE_ERROR`.
    pub parse_errors: Vec<String>,
    /// Problems flagd loads and answers at evaluation time (`null`, the
    /// default variant, an evaluation error): reported as warnings.
    pub warnings: Vec<String>,
    depth_reported: bool,
    /// Sizes of the last rule compiled.
    pub stats: Stats,
    /// Whether the node being compiled gives the rule's result (a variant
    /// name): the root, `if` branches, `or`/`and` operands. A `fractional`
    /// elsewhere (an `if` condition) yields values that are not variants.
    in_result: bool,
}

impl<'d> Compiler<'d> {
    pub(crate) fn new(refs: Refs<'d>) -> Self {
        let bucketing = refs.borrow().bucketing;
        Compiler {
            refs,
            variants: None,
            bucketing,
            fatal: Vec::new(),
            parse_errors: Vec::new(),
            warnings: Vec::new(),
            depth_reported: false,
            stats: Stats::default(),
            in_result: true,
        }
    }

    fn fatal(&mut self, msg: String) {
        if !self.fatal.contains(&msg) {
            self.fatal.push(msg);
        }
    }

    fn parse_error(&mut self, msg: String) {
        if !self.parse_errors.contains(&msg) {
            self.parse_errors.push(msg);
        }
    }

    fn warn(&mut self, msg: String) {
        if !self.warnings.contains(&msg) {
            self.warnings.push(msg);
        }
    }

    /// Compiles one rule. Problems are collected in `self.fatal`,
    /// `self.parse_errors` and `self.warnings`.
    pub(crate) fn compile(&mut self, v: &'d Value) -> Node {
        self.in_result = true;
        let n = self.node(v, 0);
        self.stats = n.stats();
        if self.stats.max_body_expanded > MAX_COMPILED_NODES {
            self.fatal(format!(
                "targeting: a map/filter/all/some/none/reduce body expands to {} nodes through $ref, above the budget of {MAX_COMPILED_NODES} nodes",
                self.stats.max_body_expanded
            ));
        }
        n
    }

    fn node(&mut self, v: &'d Value, depth: usize) -> Node {
        if depth > MAX_RULE_DEPTH {
            if !self.depth_reported {
                self.depth_reported = true;
                self.fatal(format!(
                    "targeting: rule nested deeper than {MAX_RULE_DEPTH} levels"
                ));
            }
            return Node::Const(Value::Null);
        }
        match v {
            Value::Array(items) => {
                let nodes: Vec<Node> = items.iter().map(|i| self.node(i, depth + 1)).collect();
                if nodes.iter().all(|n| matches!(n, Node::Const(_))) {
                    Node::Const(Value::Array(
                        nodes
                            .into_iter()
                            .map(|n| match n {
                                Node::Const(c) => c,
                                _ => Value::Null,
                            })
                            .collect(),
                    ))
                } else {
                    Node::Array(nodes)
                }
            }
            Value::Object(m) if m.is_empty() => Node::Const(v.clone()),
            Value::Object(m) => {
                if m.len() > 1 {
                    let keys: Vec<&str> = m.keys().map(String::as_str).collect();
                    self.parse_error(format!(
                        "targeting: an operation must have exactly one key, found {{{}}}",
                        keys.iter()
                            .map(|k| format!("\"{k}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    return Node::Const(Value::Null);
                }
                let (op, arg) = m.iter().next().expect("one key");
                if op == "$ref" {
                    return self.reference(arg, depth);
                }
                let node = self.operation(op, arg, depth);
                self.fold(op, node)
            }
            _ => Node::Const(v.clone()),
        }
    }

    /// A `$ref`: the evaluator compiled once and shared, never inlined.
    fn reference(&mut self, arg: &'d Value, depth: usize) -> Node {
        let Value::String(name) = arg else {
            self.parse_error(format!("$ref must name an evaluator, found {arg}"));
            return Node::Const(Value::Null);
        };
        let Some((target, parse_errors)) = self.target(name) else {
            return Node::Const(Value::Null);
        };
        for p in parse_errors {
            let p = p.strip_prefix("targeting: ").unwrap_or(&p);
            self.parse_error(format!("$ref \"{name}\": {p}"));
        }
        if depth + 1 + target.height > MAX_RULE_DEPTH && !self.depth_reported {
            self.depth_reported = true;
            self.fatal(format!(
                "targeting: rule nested deeper than {MAX_RULE_DEPTH} levels (through $ref \"{name}\")"
            ));
        }
        Node::Ref(target)
    }

    /// The compiled evaluator `name` and its parse errors (compiled now if
    /// not yet); `None` (with a parse error recorded) if there is none or it
    /// refers to itself.
    fn target(&mut self, name: &'d str) -> Option<Resolved> {
        let def = {
            let mut t = self.refs.borrow_mut();
            let Some(def) = t.defs.and_then(|e| e.get(name)) else {
                drop(t);
                self.parse_error(format!("$ref \"{name}\" not found in $evaluators"));
                return None;
            };
            match t.slots.get(name) {
                Some(Some(done)) => return Some(done.clone()),
                Some(None) => {
                    let chain = t.stack.join(" -> ");
                    drop(t);
                    self.parse_error(format!("$ref cycle: {chain} -> {name}"));
                    return None;
                }
                None => {}
            }
            t.slots.insert(name, None);
            t.stack.push(name);
            def
        };
        let mut c = Compiler::new(self.refs.clone());
        let node = c.compile(def);
        let mut t = self.refs.borrow_mut();
        t.stack.pop();
        let id = t.reports.len();
        t.nodes = t.nodes.saturating_add(c.stats.nodes);
        t.reports.push(EvaluatorReport {
            name: name.to_string(),
            fatal: c.fatal,
            parse_errors: c.parse_errors.clone(),
            warnings: c.warnings,
        });
        let target = Arc::new(RefTarget {
            id,
            node,
            height: c.stats.height,
            expanded: c.stats.expanded,
        });
        let done = (target, c.parse_errors);
        t.slots.insert(name, Some(done.clone()));
        Some(done)
    }

    /// Arguments of an eager operator, coerced as json-logic-engine does.
    fn args(&mut self, arg: &'d Value, depth: usize) -> Args {
        match arg {
            Value::Array(items) => {
                Args::List(items.iter().map(|i| self.node(i, depth + 1)).collect())
            }
            Value::Object(m) if !m.is_empty() => Args::Spread(Box::new(self.node(arg, depth + 1))),
            _ => Args::List(vec![Node::Const(arg.clone())]),
        }
    }

    /// Arguments of a lazy operator, which must be a literal array.
    fn lazy_list(
        &mut self,
        op: &str,
        arg: &'d Value,
        depth: usize,
        min: usize,
    ) -> Option<Vec<Node>> {
        self.lazy_list_at(op, arg, depth, min, false, |_, _| false)
    }

    /// As `lazy_list`; `result_pos(i, len)` tells which arguments can be
    /// the operation's result (when the operation itself is).
    fn lazy_list_at(
        &mut self,
        op: &str,
        arg: &'d Value,
        depth: usize,
        min: usize,
        res: bool,
        result_pos: fn(usize, usize) -> bool,
    ) -> Option<Vec<Node>> {
        let outer = self.in_result;
        match arg {
            Value::Array(items) if items.len() >= min => {
                let n = items.len();
                let mut out = Vec::with_capacity(n);
                for (i, item) in items.iter().enumerate() {
                    self.in_result = res && result_pos(i, n);
                    out.push(self.node(item, depth + 1));
                }
                self.in_result = outer;
                Some(out)
            }
            Value::Array(items) => {
                self.parse_error(format!(
                    "targeting: \"{op}\" needs at least {min} arguments, found {}",
                    items.len()
                ));
                None
            }
            _ => {
                self.parse_error(format!("targeting: \"{op}\" needs an array of arguments"));
                None
            }
        }
    }

    fn operation(&mut self, op: &str, arg: &'d Value, depth: usize) -> Node {
        let res = self.in_result;
        // Arguments give the result only where `lazy_list_at` says so.
        self.in_result = false;
        let n = self.operation_args(op, arg, depth, res);
        self.in_result = res;
        n
    }

    fn operation_args(&mut self, op: &str, arg: &'d Value, depth: usize, res: bool) -> Node {
        let d = depth;
        let null = || Node::Const(Value::Null);
        match op {
            "var" => self.var(arg, d),
            "missing" => Node::Missing(self.args(arg, d)),
            "missing_some" => match arg {
                Value::Array(a) if a.len() == 2 => {
                    let need = self.node(&a[0], d + 1);
                    Node::MissingSome(Box::new(need), self.args(&a[1], d + 1))
                }
                _ => {
                    self.parse_error(
                        "targeting: \"missing_some\" needs [minimum, [keys...]]".to_string(),
                    );
                    null()
                }
            },
            // Branches (odd positions and a trailing else) give the result.
            "if" | "?:" => match self.lazy_list_at(op, arg, d, 0, res, |i, n| {
                i % 2 == 1 || (i + 1 == n && n % 2 == 1)
            }) {
                Some(mut nodes) => {
                    if nodes.len() > 1 && nodes.len() % 2 == 0 {
                        nodes.push(null());
                    }
                    Node::If(nodes)
                }
                None => null(),
            },
            "==" | "===" | "!=" | "!==" | "<" | "<=" | ">" | ">=" => {
                let cop = match op {
                    "==" => CmpOp::Eq,
                    "===" => CmpOp::StrictEq,
                    "!=" => CmpOp::Ne,
                    "!==" => CmpOp::StrictNe,
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                match self.lazy_list(op, arg, d, 2) {
                    Some(nodes) => Node::Cmp(cop, nodes),
                    None => null(),
                }
            }
            "!" | "!!" => {
                let inner = match arg {
                    Value::Array(a) => a.first().map_or_else(null, |x| self.node(x, d + 1)),
                    _ => self.node(arg, d + 1),
                };
                if op == "!" {
                    Node::Not(Box::new(inner))
                } else {
                    Node::NotNot(Box::new(inner))
                }
            }
            "or" | "and" => match self.lazy_list_at(op, arg, d, 0, res, |_, _| true) {
                Some(nodes) if op == "or" => Node::Or(nodes),
                Some(nodes) => Node::And(nodes),
                None => null(),
            },
            "+" | "-" | "*" | "/" | "%" => {
                let a = match op {
                    "+" => ArithOp::Add,
                    "-" => ArithOp::Sub,
                    "*" => ArithOp::Mul,
                    "/" => ArithOp::Div,
                    _ => ArithOp::Mod,
                };
                Node::Arith(a, self.args(arg, d))
            }
            "min" | "max" => Node::MinMax(op == "max", self.args(arg, d)),
            "cat" => Node::Cat(self.args(arg, d)),
            "substr" => Node::Substr(self.args(arg, d)),
            "in" => Node::In(self.args(arg, d)),
            "merge" => Node::Merge(self.args(arg, d)),
            "map" | "filter" | "all" | "some" | "none" => {
                let iop = match op {
                    "map" => IterOp::Map,
                    "filter" => IterOp::Filter,
                    "all" => IterOp::All,
                    "some" => IterOp::Some,
                    _ => IterOp::None,
                };
                match self.lazy_list(op, arg, d, 0) {
                    Some(mut nodes) => {
                        nodes.truncate(2);
                        while nodes.len() < 2 {
                            nodes.push(null());
                        }
                        let mapper = nodes.pop().expect("2");
                        let sel = nodes.pop().expect("1");
                        Node::Iter(iop, Box::new(sel), Box::new(mapper))
                    }
                    None => null(),
                }
            }
            "reduce" => match self.lazy_list(op, arg, d, 0) {
                Some(nodes) => {
                    let has_init = nodes.len() >= 3;
                    let mut it = nodes.into_iter();
                    let sel = it.next().unwrap_or_else(null);
                    let mapper = it.next().unwrap_or_else(null);
                    let init = if has_init {
                        it.next().map(Box::new)
                    } else {
                        None
                    };
                    Node::Reduce(Box::new(sel), Box::new(mapper), init)
                }
                None => null(),
            },
            "starts_with" | "ends_with" => {
                if let Value::Array(a) = arg {
                    if a.len() != 2 {
                        self.warn(format!(
                            "targeting: \"{op}\" needs 2 arguments, found {}",
                            a.len()
                        ));
                    }
                }
                Node::StrCmp(op == "starts_with", self.args(arg, d))
            }
            "sem_ver" => {
                if let Value::Array(a) = arg {
                    if a.len() != 3 {
                        self.warn(format!(
                            "targeting: \"sem_ver\" needs 3 arguments, found {}",
                            a.len()
                        ));
                    } else if let Value::String(o) = &a[1] {
                        if SemVerOp::parse(o).is_none() {
                            self.warn(format!(
                                "targeting: sem_ver: unknown operator \"{o}\" (expected one of =, !=, <, <=, >, >=, ^, ~)"
                            ));
                        }
                    }
                }
                Node::SemVer(self.args(arg, d))
            }
            "fractional" => self.fractional(arg, d, res),
            _ => {
                let hint = OPERATORS
                    .iter()
                    .map(|k| (edit_distance(op, k), *k))
                    .filter(|(dist, _)| *dist <= 2)
                    .min()
                    .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
                    .unwrap_or_default();
                self.parse_error(format!("targeting: unknown operator \"{op}\"{hint}"));
                null()
            }
        }
    }

    fn var(&mut self, arg: &'d Value, d: usize) -> Node {
        let (key, default) = match arg {
            Value::Array(a) => (a.first(), a.get(1).map(|x| Box::new(self.node(x, d + 1)))),
            _ => (Some(arg), None),
        };
        let key_str: Cow<'_, str> = match key {
            None | Some(Value::Null) => Cow::Borrowed(""),
            Some(Value::String(s)) => Cow::Borrowed(s.as_str()),
            Some(Value::Object(m)) if !m.is_empty() => {
                let k = self.node(key.expect("some"), d + 1);
                if let Node::Const(c) = &k {
                    let s = to_js_string(&Val::from_ref(c)).into_owned();
                    return var_path(&s, default);
                }
                return Node::VarDyn {
                    key: Box::new(k),
                    default,
                };
            }
            Some(other) => to_js_string(&Val::from_ref(other)),
        };
        var_path(&key_str, default)
    }

    fn fractional(&mut self, arg: &'d Value, d: usize, res: bool) -> Node {
        let items = match arg {
            Value::Array(a) => a,
            Value::Object(m) if !m.is_empty() => {
                return Node::Fractional(Box::new(Fractional {
                    by: None,
                    buckets: Buckets::Spread(self.node(arg, d + 1)),
                    bucketing: self.bucketing,
                }))
            }
            _ => {
                self.warn("targeting: \"fractional\" needs an array of buckets".to_string());
                return Node::Const(Value::Null);
            }
        };
        if items.is_empty() {
            self.warn("targeting: \"fractional\" needs at least one bucket".to_string());
            return Node::Const(Value::Null);
        }
        let (by, rest) = if items[0].is_array() {
            (None, &items[..])
        } else {
            (Some(self.node(&items[0], d + 1)), &items[1..])
        };
        if rest.is_empty() {
            self.warn("targeting: \"fractional\" needs at least one bucket".to_string());
        }
        let nodes: Vec<Node> = rest.iter().map(|b| self.node(b, d + 1)).collect();
        if !nodes.iter().all(|n| matches!(n, Node::Const(_))) {
            return Node::Fractional(Box::new(Fractional {
                by,
                buckets: Buckets::Dynamic(nodes),
                bucketing: self.bucketing,
            }));
        }
        // Literal buckets: checked once here. flagd loads a bad bucket and
        // answers `null` at evaluation time (a negative weight counts as 0);
        // we do the same and report it as a warning.
        let mut entries = Vec::with_capacity(nodes.len());
        let mut total: u64 = 0;
        let mut invalid = false;
        for n in &nodes {
            let Node::Const(b) = n else { continue };
            let (variant, weight) = match parse_bucket(&Val::from_ref(b)) {
                Ok(e) => e,
                Err(e) => {
                    self.warn(format!(
                        "targeting: fractional: bucket {b}: {}; the fractional answers null",
                        e.0
                    ));
                    invalid = true;
                    continue;
                }
            };
            if let Some(Value::Number(w)) = b.as_array().and_then(|a| a.get(1)) {
                if w.as_f64().is_some_and(|f| f < 0.0) {
                    self.warn(format!(
                        "targeting: fractional: weight {w} of variant {} is negative and counts as 0",
                        variant.to_value()
                    ));
                }
            }
            if let (true, Some(names), false) = (res, &self.variants, variant.is_null()) {
                let name = to_js_string(&variant);
                if !names.iter().any(|n| *n == name.as_ref()) {
                    let list = names.join(", ");
                    self.warn(format!(
                        "targeting: fractional: variant \"{name}\" is not one of the variants [{list}]"
                    ));
                }
            }
            total = total.saturating_add(weight);
            entries.push((variant.to_value(), weight));
        }
        if !invalid && total > MAX_TOTAL_WEIGHT {
            self.warn(format!(
                "targeting: fractional: weights sum to {total}, more than {MAX_TOTAL_WEIGHT}; the fractional answers null"
            ));
        }
        let buckets = if invalid {
            Buckets::Invalid
        } else {
            Buckets::Static(entries, total)
        };
        Node::Fractional(Box::new(Fractional {
            by,
            buckets,
            bucketing: self.bucketing,
        }))
    }

    /// Pre-evaluates an operation whose arguments are all constants.
    fn fold(&mut self, op: &str, node: Node) -> Node {
        if !foldable(&node) {
            return node;
        }
        let empty = Value::Object(Map::new());
        let env = Env::new(&empty, "");
        let r = eval(&node, &env, Scope::Root).map(|v| v.to_value());
        match r {
            Ok(v) => Node::Const(v),
            Err(e) => {
                // Kept as is: it fails at evaluation time, as in flagd-core.
                self.warn(format!(
                    "targeting: \"{op}\" on constant arguments fails: {}",
                    e.0
                ));
                node
            }
        }
    }
}

fn var_path(key: &str, default: Option<Box<Node>>) -> Node {
    if key.is_empty() {
        return Node::Var {
            path: Box::new([]),
            kind: VarKind::Whole,
            default,
        };
    }
    let path: Vec<Box<str>> = split_path(key)
        .into_iter()
        .map(String::into_boxed_str)
        .collect();
    let kind = match path.as_slice() {
        [a, b] if &**a == "$flagd" && &**b == "flagKey" => VarKind::FlagKey,
        [a, b] if &**a == "$flagd" && &**b == "timestamp" => VarKind::Timestamp,
        _ => VarKind::Path,
    };
    Node::Var {
        path: path.into_boxed_slice(),
        kind,
        default,
    }
}

fn is_const(n: &Node) -> bool {
    matches!(n, Node::Const(_))
}

fn args_const(a: &Args) -> bool {
    match a {
        Args::List(l) => l.iter().all(is_const),
        Args::Spread(n) => is_const(n),
    }
}

/// Whether a node depends on nothing but its (constant) arguments.
fn foldable(n: &Node) -> bool {
    match n {
        Node::If(l) | Node::Cmp(_, l) | Node::Or(l) | Node::And(l) => l.iter().all(is_const),
        Node::Not(a) | Node::NotNot(a) => is_const(a),
        Node::Arith(_, a)
        | Node::MinMax(_, a)
        | Node::Cat(a)
        | Node::Substr(a)
        | Node::In(a)
        | Node::Merge(a)
        | Node::StrCmp(_, a)
        | Node::SemVer(a) => args_const(a),
        Node::Iter(_, s, m) => is_const(s) && is_const(m),
        Node::Reduce(s, m, i) => is_const(s) && is_const(m) && i.as_deref().is_none_or(is_const),
        _ => false,
    }
}

/// json-logic-engine's `splitPath`: `.` separates, `\` escapes `.`, `/` and `\`.
pub(crate) fn split_path(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut n_chars = 0usize;
    while let Some(c) = chars.next() {
        n_chars += 1;
        if c == '\\' {
            match chars.peek() {
                Some(&n) if n == '.' || n == '/' || n == '\\' => {
                    cur.push(n);
                    chars.next();
                    n_chars += 1;
                }
                _ => cur.push('\\'),
            }
        } else if c == '.' {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if parts.len() != n_chars {
        parts.push(cur);
    }
    parts
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------- evaluating

/// What one evaluation sees: the context object and flagd's injected values.
pub(crate) struct Env<'v> {
    pub ctx: &'v Value,
    pub flag_key: &'v str,
    now: Cell<Option<f64>>,
    /// json-logic-engine compiles a rule into one JS function sharing one
    /// temporary, `prev`, which compiled `var`, `or`, `and` and comparisons
    /// all assign, and which a comparison then reads as its left operand for
    /// `compareCheck`. So `{"<=": [10, {"var": "age"}]}` with `age: "abc"`
    /// compares "abc" with "abc" (no error) and yields `false`. We replay that
    /// register to give the same results.
    prev: RefCell<Val<'v>>,
    /// Values of shared evaluators met at the top scope in this evaluation,
    /// with `prev` after each, by `RefTarget::id`.
    refs: RefCell<Vec<Option<(Val<'v>, Val<'v>)>>>,
    /// Whether to memoise shared evaluators (see `Node::meets_a_ref_twice`).
    pub memo: bool,
    /// Nodes evaluated (tests check that shared evaluators are memoised).
    #[cfg(test)]
    pub steps: Cell<u64>,
}

impl<'v> Env<'v> {
    pub(crate) fn new(ctx: &'v Value, flag_key: &'v str) -> Self {
        Env {
            ctx,
            flag_key,
            now: Cell::new(None),
            prev: RefCell::new(Val::Null),
            refs: RefCell::new(Vec::new()),
            memo: true,
            #[cfg(test)]
            steps: Cell::new(0),
        }
    }

    #[inline]
    fn set_prev(&self, v: &Val<'v>) {
        *self.prev.borrow_mut() = v.clone();
    }

    fn timestamp(&self) -> f64 {
        if let Some(t) = self.now.get() {
            return t;
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs() as f64);
        self.now.set(Some(t));
        t
    }
}

/// The data `var` reads: the context, or the element of an iteration.
#[derive(Clone, Copy)]
pub(crate) enum Scope<'s, 'v> {
    Root,
    Item(&'s Val<'v>),
    Reduce(&'s Val<'v>, &'s Val<'v>),
}

fn value_member<'v>(v: &'v Value, seg: &str) -> Option<&'v Value> {
    match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    }
}

fn val_member<'v>(v: &Val<'v>, seg: &str) -> Option<Val<'v>> {
    match v {
        Val::Ref(r) => value_member(r, seg).map(Val::from_ref),
        Val::Arr(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i).cloned()),
        _ => None,
    }
}

/// Looks up a path in the current scope; `None` when absent.
fn lookup<'v, S: AsRef<str>>(
    path: &[S],
    kind: VarKind,
    env: &Env<'v>,
    sc: Scope<'_, 'v>,
) -> Option<Val<'v>> {
    match sc {
        Scope::Root => match kind {
            VarKind::Whole => Some(Val::Ref(env.ctx)),
            VarKind::FlagKey => Some(Val::Str(Cow::Borrowed(env.flag_key))),
            VarKind::Timestamp => Some(Val::Num(env.timestamp())),
            VarKind::Path => {
                let first = path.first()?.as_ref();
                if first == "$flagd" {
                    // flagd replaces `$flagd` with {flagKey, timestamp}.
                    return match path.get(1).map(AsRef::as_ref) {
                        Some("flagKey") if path.len() == 2 => {
                            Some(Val::Str(Cow::Borrowed(env.flag_key)))
                        }
                        Some("timestamp") if path.len() == 2 => Some(Val::Num(env.timestamp())),
                        _ => None,
                    };
                }
                let mut cur = env.ctx.as_object()?.get(first)?;
                for seg in &path[1..] {
                    cur = value_member(cur, seg.as_ref())?;
                }
                Some(Val::from_ref(cur))
            }
        },
        Scope::Item(item) => {
            if kind == VarKind::Whole {
                return Some(item.clone());
            }
            let mut it = path.iter();
            let mut cur = val_member(item, it.next()?.as_ref())?;
            for seg in it {
                cur = val_member(&cur, seg.as_ref())?;
            }
            Some(cur)
        }
        Scope::Reduce(acc, current) => {
            if kind == VarKind::Whole {
                return None;
            }
            let mut it = path.iter();
            let mut cur = match it.next()?.as_ref() {
                "accumulator" => acc.clone(),
                "current" => current.clone(),
                _ => return None,
            };
            for seg in it {
                cur = val_member(&cur, seg.as_ref())?;
            }
            Some(cur)
        }
    }
}

/// `missing`: present unless some step meets a falsy value or an absent key.
fn is_missing<'v>(key: &str, env: &Env<'v>, sc: Scope<'_, 'v>) -> bool {
    let path = split_path(key);
    if matches!(sc, Scope::Root) && path.first().map(String::as_str) == Some("$flagd") {
        return lookup(&path, VarKind::Path, env, sc).is_none();
    }
    let mut cur: Val<'_> = match sc {
        Scope::Root => Val::Ref(env.ctx),
        Scope::Item(v) => v.clone(),
        Scope::Reduce(..) => return true,
    };
    for seg in &path {
        if !cur.truthy() && !cur.is_object_like() {
            return true;
        }
        match val_member(&cur, seg) {
            Some(v) => cur = v,
            None => return true,
        }
    }
    false
}

fn eval_list<'v>(
    args: &'v Args,
    env: &Env<'v>,
    sc: Scope<'_, 'v>,
) -> Result<Vec<Val<'v>>, LogicError> {
    match args {
        Args::List(l) => l.iter().map(|n| eval(n, env, sc)).collect(),
        Args::Spread(n) => {
            let v = eval(n, env, sc)?;
            Ok(spread(v))
        }
    }
}

fn spread(v: Val<'_>) -> Vec<Val<'_>> {
    match v {
        Val::Arr(a) => a,
        Val::Ref(Value::Array(a)) => a.iter().map(Val::from_ref).collect(),
        other => vec![other],
    }
}

/// The `i`-th argument without building a list for literal argument lists.
fn arg<'v>(args: &'v Args, i: usize, env: &Env<'v>, sc: Scope<'_, 'v>) -> Option<R<'v>> {
    match args {
        Args::List(l) => l.get(i).map(|n| eval(n, env, sc)),
        Args::Spread(_) => None,
    }
}

fn arg_count(args: &Args) -> Option<usize> {
    match args {
        Args::List(l) => Some(l.len()),
        Args::Spread(_) => None,
    }
}

/// json-logic-engine's `precoerceNumber` followed by `+x`.
#[inline]
fn num(v: &Val<'_>) -> Result<f64, LogicError> {
    match v {
        Val::Num(n) if n.is_nan() => Err(NAN),
        Val::Num(n) => Ok(*n),
        Val::Arr(_) | Val::Ref(_) => Err(NAN),
        other => Ok(other.to_number()),
    }
}

/// json-logic-engine's `compareCheck(item, prev, strict)`.
fn compare_check<'v>(item: Val<'v>, prev: &Val<'v>, strict: bool) -> R<'v> {
    if strict || (item.is_str_or_null() && prev.is_str_or_null()) {
        return Ok(item);
    }
    if num(&item)?.is_nan() && !prev.is_null() {
        return Err(NAN);
    }
    if num(prev)?.is_nan() {
        return Err(NAN);
    }
    if prev.is_null() && !item.truthy() {
        return Ok(Val::Null);
    }
    if item.is_null() && !prev.truthy() {
        return Ok(Val::Num(0.0));
    }
    Ok(item)
}

fn compare(op: CmpOp, a: &Val<'_>, b: &Val<'_>) -> bool {
    match op {
        CmpOp::Eq => loose_eq(a, b),
        CmpOp::Ne => !loose_eq(a, b),
        CmpOp::StrictEq => strict_eq(a, b),
        CmpOp::StrictNe => !strict_eq(a, b),
        CmpOp::Lt => js_cmp(a, b) == Some(Ordering::Less),
        CmpOp::Le => matches!(js_cmp(a, b), Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => js_cmp(a, b) == Some(Ordering::Greater),
        CmpOp::Ge => matches!(js_cmp(a, b), Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// Evaluates a node. Recursion is bounded by the rule depth checked at
/// compile time; nothing in the context can deepen it.
pub(crate) fn eval<'v>(n: &'v Node, env: &Env<'v>, sc: Scope<'_, 'v>) -> R<'v> {
    #[cfg(test)]
    env.steps.set(env.steps.get() + 1);
    match n {
        Node::Const(v) => Ok(Val::from_ref(v)),
        Node::Array(items) => Ok(Val::Arr(
            items
                .iter()
                .map(|i| eval(i, env, sc))
                .collect::<Result<_, _>>()?,
        )),
        Node::Var {
            path,
            kind,
            default,
        } => {
            let v = match lookup(path, *kind, env, sc) {
                Some(v) if !v.is_null() => v,
                _ => match default {
                    Some(d) => eval(d, env, sc)?,
                    None => Val::Null,
                },
            };
            env.set_prev(&v);
            Ok(v)
        }
        Node::VarDyn { key, default } => {
            let k = eval(key, env, sc)?;
            let k = to_js_string(&k);
            let found = if k.is_empty() {
                lookup::<&str>(&[], VarKind::Whole, env, sc)
            } else {
                let path = split_path(&k);
                lookup(&path, VarKind::Path, env, sc)
            };
            match found {
                Some(v) if !v.is_null() => Ok(v),
                _ => match default {
                    Some(d) => eval(d, env, sc),
                    None => Ok(Val::Null),
                },
            }
        }
        Node::Missing(args) => {
            let keys = eval_list(args, env, sc)?;
            Ok(Val::Arr(missing(keys, env, sc)))
        }
        Node::MissingSome(need, args) => {
            let need = eval(need, env, sc)?.to_number();
            let keys = eval_list(args, env, sc)?;
            let total = keys.len();
            let miss = missing(keys, env, sc);
            env.set_prev(&Val::Arr(miss.clone()));
            if (total - miss.len()) as f64 >= need {
                Ok(Val::Arr(Vec::new()))
            } else {
                Ok(Val::Arr(miss))
            }
        }
        Node::If(items) => {
            match items.len() {
                0 => return Ok(Val::Null),
                1 => return eval(&items[0], env, sc),
                _ => {}
            }
            let mut i = 0;
            while i + 1 < items.len() {
                if eval(&items[i], env, sc)?.truthy() {
                    return eval(&items[i + 1], env, sc);
                }
                i += 2;
            }
            eval(&items[items.len() - 1], env, sc)
        }
        Node::Cmp(op, items) => {
            // Compiled as `(prev = a) OP compareCheck(b, prev)` and, for more
            // arguments, `((prev = a) OP (prev = compareCheck(b, prev))) &&
            // prev OP (prev = compareCheck(c, prev))`; see `Env::prev`.
            let strict = matches!(op, CmpOp::StrictEq | CmpOp::StrictNe);
            let mut left = eval(&items[0], env, sc)?;
            env.set_prev(&left);
            for item in &items[1..] {
                let cur = eval(item, env, sc)?;
                let checked = {
                    let prev = env.prev.borrow();
                    compare_check(cur, &prev, strict)?
                };
                env.set_prev(&checked);
                if !compare(*op, &left, &checked) {
                    return Ok(Val::Bool(false));
                }
                left = checked;
            }
            Ok(Val::Bool(true))
        }
        Node::Not(a) => Ok(Val::Bool(!eval(a, env, sc)?.truthy())),
        Node::NotNot(a) => Ok(Val::Bool(eval(a, env, sc)?.truthy())),
        Node::Or(items) => {
            let mut last = Val::Null;
            for i in items {
                last = eval(i, env, sc)?;
                env.set_prev(&last);
                if last.truthy() {
                    return Ok(last);
                }
            }
            Ok(last)
        }
        Node::And(items) => {
            let mut last = Val::Null;
            for i in items {
                last = eval(i, env, sc)?;
                env.set_prev(&last);
                if !last.truthy() {
                    return Ok(last);
                }
            }
            Ok(last)
        }
        Node::Arith(op, args) => arith(*op, args, env, sc),
        Node::MinMax(is_max, args) => {
            let vals = eval_list(args, env, sc)?;
            let mut best: Option<f64> = None;
            for v in &vals {
                let Val::Num(x) = v else {
                    return Err(INVALID_ARGS);
                };
                best = Some(match best {
                    None => *x,
                    Some(b) if (*is_max && *x > b) || (!*is_max && *x < b) => *x,
                    Some(b) => b,
                });
            }
            best.map(Val::Num).ok_or(INVALID_ARGS)
        }
        Node::Cat(args) => match args {
            Args::List(l) => {
                if l.len() == 1 {
                    if let Val::Str(s) = eval(&l[0], env, sc)? {
                        return Ok(Val::Str(s));
                    }
                }
                let mut s = String::new();
                for n in l {
                    append_js_string(&eval(n, env, sc)?, &mut s, 0);
                }
                Ok(Val::Str(Cow::Owned(s)))
            }
            Args::Spread(n) => {
                let v = eval(n, env, sc)?;
                match v {
                    Val::Str(_) => Ok(v),
                    Val::Arr(_) | Val::Ref(Value::Array(_)) => {
                        let mut s = String::new();
                        for e in spread(v) {
                            if !e.is_null() {
                                append_js_string(&e, &mut s, 0);
                            }
                        }
                        Ok(Val::Str(Cow::Owned(s)))
                    }
                    other => Ok(Val::Str(to_js_string(&other))),
                }
            }
        },
        Node::Substr(args) => {
            let vals = eval_list(args, env, sc)?;
            let Some(Val::Str(s)) = vals.first() else {
                return Err(INVALID_ARGS);
            };
            Ok(Val::Str(Cow::Owned(substr(s, vals.get(1), vals.get(2)))))
        }
        Node::In(args) => {
            let (item, hay) = match args {
                Args::List(l) => (
                    l.first().map(|n| eval(n, env, sc)).transpose()?,
                    l.get(1).map(|n| eval(n, env, sc)).transpose()?,
                ),
                Args::Spread(_) => {
                    let mut v = eval_list(args, env, sc)?.into_iter();
                    (v.next(), v.next())
                }
            };
            let item = item.unwrap_or(Val::Null);
            let Some(hay) = hay.filter(Val::truthy) else {
                return Ok(Val::Bool(false));
            };
            Ok(Val::Bool(match &hay {
                Val::Str(s) => s.contains(to_js_string(&item).as_ref()),
                Val::Ref(Value::Array(a)) => a.iter().any(|e| strict_eq_value(&item, e)),
                Val::Arr(a) => a.iter().any(|e| strict_eq(&item, e)),
                _ => return Err(LogicError("\"in\" needs a string or an array")),
            }))
        }
        Node::Merge(args) => {
            let vals = eval_list(args, env, sc)?;
            let mut out = Vec::with_capacity(vals.len());
            for v in vals {
                match v {
                    Val::Arr(a) => out.extend(a),
                    Val::Ref(Value::Array(a)) => out.extend(a.iter().map(Val::from_ref)),
                    other => out.push(other),
                }
            }
            Ok(Val::Arr(out))
        }
        Node::Iter(op, sel, mapper) => iterate(*op, sel, mapper, env, sc),
        Node::Reduce(sel, mapper, init) => {
            let sel = eval(sel, env, sc)?;
            let items = items_of(sel)?;
            let mut it = items.into_iter();
            let mut acc = match init {
                Some(i) => check_depth(eval(i, env, sc)?)?,
                None => it.next().ok_or(LogicError("reduce of an empty array"))?,
            };
            let saved = env.prev.borrow().clone();
            for cur in it {
                match eval(mapper, env, Scope::Reduce(&acc, &cur)).and_then(check_depth) {
                    Ok(v) => acc = v,
                    Err(e) => {
                        *env.prev.borrow_mut() = saved;
                        return Err(e);
                    }
                }
            }
            *env.prev.borrow_mut() = saved;
            Ok(acc)
        }
        Node::StrCmp(starts, args) => {
            let (a, b) = match arg_count(args) {
                Some(2) => (
                    arg(args, 0, env, sc).expect("2")?,
                    arg(args, 1, env, sc).expect("2")?,
                ),
                Some(_) => return Ok(Val::Null),
                None => {
                    let v = eval_list(args, env, sc)?;
                    if v.len() != 2 {
                        return Ok(Val::Null);
                    }
                    let mut it = v.into_iter();
                    (it.next().expect("2"), it.next().expect("2"))
                }
            };
            match (&a, &b) {
                (Val::Str(a), Val::Str(b)) => Ok(Val::Bool(if *starts {
                    a.starts_with(b.as_ref())
                } else {
                    a.ends_with(b.as_ref())
                })),
                _ => Ok(Val::Null),
            }
        }
        Node::SemVer(args) => {
            let vals: Vec<Val<'v>>;
            let (a, op, b) = match args {
                Args::List(l) if l.len() == 3 => (
                    eval(&l[0], env, sc)?,
                    eval(&l[1], env, sc)?,
                    eval(&l[2], env, sc)?,
                ),
                Args::List(_) => return Ok(Val::Null),
                Args::Spread(_) => {
                    vals = eval_list(args, env, sc)?;
                    if vals.len() != 3 {
                        return Ok(Val::Null);
                    }
                    (vals[0].clone(), vals[1].clone(), vals[2].clone())
                }
            };
            Ok(sem_ver(&a, &op, &b))
        }
        Node::Fractional(f) => fractional(f, env, sc),
        Node::Ref(t) => eval_ref(t, env, sc),
    }
}

/// A shared evaluator. At the top scope its value depends only on the
/// context: with `env.memo`, it is evaluated once per evaluation however
/// often it is referred to (`prev` is replayed as if it had run again).
/// Kept out of `eval` so that its frame stays small.
#[inline(never)]
fn eval_ref<'v>(t: &'v RefTarget, env: &Env<'v>, sc: Scope<'_, 'v>) -> R<'v> {
    if !env.memo || !matches!(sc, Scope::Root) {
        return eval(&t.node, env, sc);
    }
    if let Some(Some((v, prev))) = env.refs.borrow().get(t.id) {
        *env.prev.borrow_mut() = prev.clone();
        return Ok(v.clone());
    }
    let v = eval(&t.node, env, sc)?;
    let mut memo = env.refs.borrow_mut();
    if memo.len() <= t.id {
        memo.resize(t.id + 1, None);
    }
    memo[t.id] = Some((v.clone(), env.prev.borrow().clone()));
    Ok(v)
}

fn missing<'v>(keys: Vec<Val<'v>>, env: &Env<'v>, sc: Scope<'_, 'v>) -> Vec<Val<'v>> {
    keys.into_iter()
        .filter(|k| is_missing(&to_js_string(k), env, sc))
        .collect()
}

/// Rejects accumulators nesting objects, as json-logic-engine's
/// `assertAllowedDepth` with its default `maxDepth` of 0 does.
fn check_depth(v: Val<'_>) -> R<'_> {
    let nested = match &v {
        Val::Arr(a) => a.iter().any(Val::is_object_like),
        Val::Ref(Value::Array(a)) => a.iter().any(|e| e.is_array() || e.is_object()),
        Val::Ref(Value::Object(o)) => o.values().any(|e| e.is_array() || e.is_object()),
        _ => false,
    };
    if nested {
        Err(LogicError("reduce accumulator nests objects"))
    } else {
        Ok(v)
    }
}

fn items_of(sel: Val<'_>) -> Result<Vec<Val<'_>>, LogicError> {
    match sel {
        Val::Arr(a) => Ok(a),
        Val::Ref(Value::Array(a)) => Ok(a.iter().map(Val::from_ref).collect()),
        v if !v.truthy() => Ok(Vec::new()),
        _ => Err(NOT_ITERABLE),
    }
}

fn iterate<'v>(
    op: IterOp,
    sel: &'v Node,
    mapper: &'v Node,
    env: &Env<'v>,
    sc: Scope<'_, 'v>,
) -> R<'v> {
    let sel = eval(sel, env, sc)?;
    if op == IterOp::All {
        // compiled as `Array.isArray(prev = selector) && ...`
        env.set_prev(&sel);
        if sel.array_len() == Some(0) {
            return Ok(Val::Bool(false));
        }
    }
    // The mapper is compiled into its own function with its own `prev`.
    let saved = env.prev.borrow().clone();
    let r = iterate_items(op, &sel, mapper, env);
    *env.prev.borrow_mut() = saved;
    r
}

fn iterate_items<'v>(op: IterOp, sel: &Val<'v>, mapper: &'v Node, env: &Env<'v>) -> R<'v> {
    let len = match sel.array_len() {
        Some(n) => n,
        None if !sel.truthy() => 0,
        None => return Err(NOT_ITERABLE),
    };
    let mut out = Vec::new();
    for i in 0..len {
        let item = sel.array_get(i).unwrap_or(Val::Null);
        let r = eval(mapper, env, Scope::Item(&item))?;
        match op {
            IterOp::Map => out.push(r),
            IterOp::Filter if r.truthy() => out.push(item),
            IterOp::All if !r.truthy() => return Ok(Val::Bool(false)),
            IterOp::Some if r.truthy() => return Ok(Val::Bool(true)),
            IterOp::None if r.truthy() => return Ok(Val::Bool(false)),
            _ => {}
        }
    }
    Ok(match op {
        IterOp::Map | IterOp::Filter => Val::Arr(out),
        IterOp::All | IterOp::None => Val::Bool(true),
        IterOp::Some => Val::Bool(false),
    })
}

fn arith<'v>(op: ArithOp, args: &'v Args, env: &Env<'v>, sc: Scope<'_, 'v>) -> R<'v> {
    let n_args;
    let mut acc = 0.0;
    // Fast path for literal lists: no intermediate vector.
    let mut apply = |i: usize, x: f64| -> Result<(), LogicError> {
        acc = if i == 0 {
            x
        } else {
            match op {
                ArithOp::Add => acc + x,
                ArithOp::Mul => acc * x,
                ArithOp::Sub => acc - x,
                ArithOp::Div => {
                    if x == 0.0 || x.is_nan() {
                        return Err(NAN);
                    }
                    acc / x
                }
                ArithOp::Mod => acc % x,
            }
        };
        Ok(())
    };
    match args {
        Args::List(l) => {
            n_args = l.len();
            for (i, n) in l.iter().enumerate() {
                let x = num(&eval(n, env, sc)?)?;
                apply(i, x)?;
            }
        }
        Args::Spread(n) => {
            let v = eval(n, env, sc)?;
            if matches!(op, ArithOp::Add | ArithOp::Sub | ArithOp::Div) {
                env.set_prev(&v);
            }
            let is_array = v.array_len().is_some();
            if !is_array && matches!(op, ArithOp::Mul | ArithOp::Div | ArithOp::Mod) {
                return Err(INVALID_ARGS);
            }
            let vals = spread(v);
            n_args = vals.len();
            for (i, v) in vals.iter().enumerate() {
                apply(i, num(v)?)?;
            }
        }
    }
    let r = match (op, n_args) {
        (ArithOp::Add, 0) => 0.0,
        (ArithOp::Mul, 0) => 1.0,
        (ArithOp::Sub | ArithOp::Div, 0) => return Err(INVALID_ARGS),
        (ArithOp::Mod, 0 | 1) => return Err(INVALID_ARGS),
        (ArithOp::Sub, 1) => -acc,
        (ArithOp::Div, 1) => {
            if acc == 0.0 {
                return Err(NAN);
            }
            1.0 / acc
        }
        _ => acc,
    };
    if r.is_nan() {
        return Err(NAN);
    }
    Ok(Val::Num(r))
}

/// JS `String.prototype.substr` semantics (as json-logic-engine calls it),
/// counted in characters rather than UTF-16 code units.
fn substr(s: &str, from: Option<&Val<'_>>, len: Option<&Val<'_>>) -> String {
    fn to_int(v: &Val<'_>) -> f64 {
        let n = v.to_number();
        if n.is_nan() {
            0.0
        } else {
            n.trunc()
        }
    }
    fn js_substr(chars: &[char], start: f64, length: Option<f64>) -> &[char] {
        let size = chars.len() as f64;
        let st = if start < 0.0 {
            (size + start).max(0.0)
        } else {
            start.min(size)
        };
        let l = length.map_or(size - st, |l| l.max(0.0).min(size - st));
        &chars[st as usize..(st + l) as usize]
    }
    let chars: Vec<char> = s.chars().collect();
    let start = from.map_or(0.0, to_int);
    // `undefined < 0` and `null < 0` are false; strings are coerced.
    let end_negative = matches!(len, Some(v) if !v.is_object_like() && v.to_number() < 0.0);
    if end_negative {
        let first = js_substr(&chars, start, None);
        let e = len.map_or(0.0, to_int);
        js_substr(first, 0.0, Some(first.len() as f64 + e))
            .iter()
            .collect()
    } else {
        js_substr(&chars, start, len.map(to_int)).iter().collect()
    }
}

// ---------------------------------------------------------------- flagd ops

/// flagd-core's `normalizeVersion`: strip one leading `v`/`V`, parse strictly
/// (node-semver also trims and accepts one more `v`), else coerce "1" / "1.2".
pub(crate) fn parse_version(raw: &Val<'_>) -> Option<semver::Version> {
    let s = to_js_string(raw);
    let s = s.strip_prefix(['v', 'V']).unwrap_or(&s);
    if s.len() <= 256 {
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        if let Ok(v) = semver::Version::parse(t) {
            const MAX_SAFE: u64 = 9_007_199_254_740_991;
            if v.major <= MAX_SAFE && v.minor <= MAX_SAFE && v.patch <= MAX_SAFE {
                return Some(v);
            }
            return None;
        }
    }
    // node-semver `coerce`, only for "N" and "N.N".
    let mut parts = s.split('.');
    let major = parts.next()?;
    let minor = parts.next();
    if parts.next().is_some() {
        return None;
    }
    let num = |p: &str| -> Option<u64> {
        if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    Some(semver::Version::new(
        num(major)?,
        minor.map_or(Some(0), num)?,
        0,
    ))
}

fn cmp_versions(a: &semver::Version, b: &semver::Version) -> Ordering {
    // Build metadata does not take part in precedence.
    (a.major, a.minor, a.patch)
        .cmp(&(b.major, b.minor, b.patch))
        .then_with(|| a.pre.cmp(&b.pre))
}

fn sem_ver<'v>(a: &Val<'_>, op: &Val<'_>, b: &Val<'_>) -> Val<'v> {
    let (Some(v1), Some(v2)) = (parse_version(a), parse_version(b)) else {
        return Val::Null;
    };
    let Some(op) = SemVerOp::parse(&to_js_string(op)) else {
        return Val::Null;
    };
    let c = cmp_versions(&v1, &v2);
    Val::Bool(match op {
        SemVerOp::Eq => c == Ordering::Equal,
        SemVerOp::Ne => c != Ordering::Equal,
        SemVerOp::Lt => c == Ordering::Less,
        SemVerOp::Le => c != Ordering::Greater,
        SemVerOp::Gt => c == Ordering::Greater,
        SemVerOp::Ge => c != Ordering::Less,
        SemVerOp::Caret => v1.major == v2.major,
        SemVerOp::Tilde => v1.major == v2.major && v1.minor == v2.minor,
    })
}

/// flagd's bucket: `hash * total >> 32` against cumulative weights.
fn pick<'v, I: Iterator<Item = (Val<'v>, u64)>>(hash: u32, total: u64, entries: I) -> Val<'v> {
    if total > MAX_TOTAL_WEIGHT {
        return Val::Null;
    }
    let bucket = (u64::from(hash) * total) >> 32;
    let mut sum = 0u64;
    for (variant, w) in entries {
        sum = sum.saturating_add(w);
        if sum > bucket {
            return variant;
        }
    }
    Val::Null
}

/// The hash a `fractional` buckets by, from its first argument's value
/// (`None`: there is none, use the targeting key), or `None` when it gives
/// `null`.
///
/// v2 (flagd's daemon up to its newest release): a string first argument is
/// hashed as UTF-8; otherwise `flagKey + targetingKey` (JavaScript string
/// conversion, as flagd-core; a falsy targeting key gives `null`).
/// v3 (flagd ADR "fractional-non-string-rand-units"): any non-null value is
/// hashed as deterministic CBOR; otherwise the CBOR array
/// `[flagKey, targetingKey]`, and a targeting key that is not a string gives
/// `null`.
fn hash_for(bucketing: Bucketing, by: Option<&Val<'_>>, env: &Env<'_>) -> Option<u32> {
    match (bucketing, by) {
        (Bucketing::V2, Some(Val::Str(s))) => Some(murmur3_32(&[s.as_bytes()], 0)),
        (Bucketing::V2, Some(_)) => None,
        (Bucketing::V2, None) => {
            let tk = env.ctx.as_object()?.get("targetingKey")?;
            let tk = Val::from_ref(tk);
            if !tk.truthy() && !tk.is_object_like() {
                return None;
            }
            let tk = to_js_string(&tk);
            Some(murmur3_32(&[env.flag_key.as_bytes(), tk.as_bytes()], 0))
        }
        (Bucketing::V3, Some(Val::Null)) => None,
        (Bucketing::V3, Some(v)) => {
            let mut buf = Vec::with_capacity(32);
            cbor::encode_val(v, &mut buf);
            Some(murmur3_32(&[&buf], 0))
        }
        (Bucketing::V3, None) => {
            let Value::String(tk) = env.ctx.as_object()?.get("targetingKey")? else {
                return None;
            };
            let mut buf = Vec::with_capacity(8 + env.flag_key.len() + tk.len());
            let pair = Val::Arr(vec![
                Val::Str(Cow::Borrowed(env.flag_key)),
                Val::Str(Cow::Borrowed(tk)),
            ]);
            cbor::encode_val(&pair, &mut buf);
            Some(murmur3_32(&[&buf], 0))
        }
    }
}

/// flagd's largest weight, and largest sum of weights.
const MAX_TOTAL_WEIGHT: u64 = i32::MAX as u64;

/// One bucket, `[variant]` or `[variant, weight]`, as flagd reads it: a
/// negative integer weight counts as 0; a weight that is not an integer or is
/// above `i32::MAX` is an error (the `fractional` gives `null`). Total on any
/// number (`1e300`, `-1e300`), never overflowing.
fn parse_bucket<'v>(b: &Val<'v>) -> Result<(Val<'v>, u64), LogicError> {
    let len = b.array_len().ok_or(LogicError(
        "a bucket must be [variant] or [variant, weight]",
    ))?;
    if len == 0 || len > 2 {
        return Err(LogicError(
            "a bucket must be [variant] or [variant, weight]",
        ));
    }
    let variant = b.array_get(0).unwrap_or(Val::Null);
    if variant.is_object_like() {
        return Err(LogicError(
            "a bucket variant must be a string, number, boolean or null",
        ));
    }
    let w = match b.array_get(1) {
        None | Some(Val::Null) => 1,
        Some(Val::Num(f)) if f.is_finite() && f.fract() == 0.0 => {
            if f > MAX_TOTAL_WEIGHT as f64 {
                return Err(LogicError("a bucket weight is above 2147483647"));
            }
            // In range 0..=i32::MAX, or negative: clamped to 0.
            f.max(0.0) as u64
        }
        Some(Val::Num(_)) => return Err(LogicError("a bucket weight must be an integer")),
        Some(_) => return Err(LogicError("a bucket weight must be a number")),
    };
    Ok((variant, w))
}

/// Buckets evaluated at run time; `None` when one is invalid.
fn parse_buckets<'v>(bs: impl Iterator<Item = Val<'v>>) -> Option<(Vec<(Val<'v>, u64)>, u64)> {
    let mut entries = Vec::new();
    let mut total = 0u64;
    for b in bs {
        let e = parse_bucket(&b).ok()?;
        // Each weight is at most i32::MAX, so this cannot overflow for any
        // realistic count; saturate anyway.
        total = total.saturating_add(e.1);
        entries.push(e);
    }
    Some((entries, total))
}

fn fractional<'v>(f: &'v Fractional, env: &Env<'v>, sc: Scope<'_, 'v>) -> R<'v> {
    let by = f.by.as_ref().map(|n| eval(n, env, sc)).transpose()?;
    if let Some(lead) = by.as_ref().filter(|v| v.array_len().is_some()) {
        return fractional_with_lead(f, lead, env, sc);
    }
    match &f.buckets {
        Buckets::Invalid => Ok(Val::Null),
        Buckets::Static(entries, total) => {
            let Some(hash) = hash_for(f.bucketing, by.as_ref(), env) else {
                return Ok(Val::Null);
            };
            Ok(pick(
                hash,
                *total,
                entries.iter().map(|(v, w)| (Val::from_ref(v), *w)),
            ))
        }
        Buckets::Dynamic(nodes) => {
            let Some(hash) = hash_for(f.bucketing, by.as_ref(), env) else {
                return Ok(Val::Null);
            };
            let mut vals = Vec::with_capacity(nodes.len());
            for n in nodes {
                vals.push(eval(n, env, sc)?);
            }
            match parse_buckets(vals.into_iter()) {
                Some((entries, total)) => Ok(pick(hash, total, entries.into_iter())),
                None => Ok(Val::Null),
            }
        }
        Buckets::Spread(n) => {
            let args = spread(eval(n, env, sc)?);
            let (by, rest) = match (f.bucketing, args.first()) {
                (_, None) => return Ok(Val::Null),
                (Bucketing::V2, Some(Val::Str(_))) => (Some(&args[0]), &args[1..]),
                (Bucketing::V2, Some(_)) => (None, &args[..]),
                (Bucketing::V3, Some(Val::Null)) => return Ok(Val::Null),
                (Bucketing::V3, Some(v)) if v.array_len().is_some() => (None, &args[..]),
                (Bucketing::V3, Some(_)) => (Some(&args[0]), &args[1..]),
            };
            let Some(hash) = hash_for(f.bucketing, by, env) else {
                return Ok(Val::Null);
            };
            match parse_buckets(rest.iter().cloned()) {
                Some((entries, total)) => Ok(pick(hash, total, entries.into_iter())),
                None => Ok(Val::Null),
            }
        }
    }
}

/// A first argument that evaluates to an array is a bucket, and the
/// targeting key is hashed (flagd and flagd-core alike). Rare: kept apart.
#[cold]
#[inline(never)]
fn fractional_with_lead<'v>(
    f: &'v Fractional,
    lead: &Val<'v>,
    env: &Env<'v>,
    sc: Scope<'_, 'v>,
) -> R<'v> {
    let mut vals = vec![lead.clone()];
    match &f.buckets {
        Buckets::Invalid => return Ok(Val::Null),
        Buckets::Static(entries, _) => vals.extend(
            entries
                .iter()
                .map(|(v, w)| Val::Arr(vec![Val::from_ref(v), Val::Num(*w as f64)])),
        ),
        Buckets::Dynamic(nodes) => {
            for n in nodes {
                vals.push(eval(n, env, sc)?);
            }
        }
        // `by` is never set with spread arguments.
        Buckets::Spread(_) => return Ok(Val::Null),
    }
    let Some(hash) = hash_for(f.bucketing, None, env) else {
        return Ok(Val::Null);
    };
    match parse_buckets(vals.into_iter()) {
        Some((entries, total)) => Ok(pick(hash, total, entries.into_iter())),
        None => Ok(Val::Null),
    }
}
