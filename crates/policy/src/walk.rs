//! A walk over the expressions of parsed Rego, without recursion.
//!
//! Used at compile time by [`crate::guard`] (the call graph of functions) and by
//! [`crate::reads`] (which parts of `input` a policy reads, which builtins it calls). Policies
//! are operator input: the walk keeps its own stack rather than the native one.

use regorus::unstable::{Expr, Literal, Query, Ref, Rule, RuleHead};

/// What a walk reports to its user.
pub(crate) trait Visitor {
    /// Called once for every expression reached. Return `false` to skip the expression's
    /// children; the visitor may push onto `more` the ones it still wants walked.
    fn expr(&mut self, expr: &Expr, more: &mut Vec<Ref<Expr>>) -> bool;

    /// Called for the target of every `with` modifier (`with input.x as …`: `input.x`). The
    /// target is also walked as an expression, and so is the replacement value.
    fn with_target(&mut self, _target: &Expr) {}
}

/// Pending expressions and queries; [`Walker::run`] visits them and everything inside them.
#[derive(Default)]
pub(crate) struct Walker {
    pub(crate) exprs: Vec<Ref<Expr>>,
    pub(crate) queries: Vec<Ref<Query>>,
}

impl Walker {
    /// Queues every expression and query of a rule: its head (path, key, arguments, value)
    /// and all its bodies.
    pub(crate) fn push_rule(&mut self, rule: &Rule) {
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { refr, assign, .. } => {
                        self.exprs.push(refr.clone());
                        if let Some(assign) = assign {
                            self.exprs.push(assign.value.clone());
                        }
                    }
                    RuleHead::Set { refr, key, .. } => {
                        self.exprs.push(refr.clone());
                        self.exprs.extend(key.iter().cloned());
                    }
                    RuleHead::Func {
                        refr, args, assign, ..
                    } => {
                        self.exprs.push(refr.clone());
                        self.exprs.extend(args.iter().cloned());
                        if let Some(assign) = assign {
                            self.exprs.push(assign.value.clone());
                        }
                    }
                }
                for body in bodies {
                    if let Some(assign) = &body.assign {
                        self.exprs.push(assign.value.clone());
                    }
                    self.queries.push(body.query.clone());
                }
            }
            Rule::Default {
                refr, args, value, ..
            } => {
                self.exprs.push(refr.clone());
                self.exprs.extend(args.iter().cloned());
                self.exprs.push(value.clone());
            }
        }
    }

    /// Visits everything queued, and everything inside it, until nothing is left.
    pub(crate) fn run(&mut self, visitor: &mut impl Visitor) {
        loop {
            if let Some(query) = self.queries.pop() {
                self.query(&query, visitor);
            } else if let Some(expr) = self.exprs.pop() {
                if visitor.expr(&expr, &mut self.exprs) {
                    self.children(&expr);
                }
            } else {
                return;
            }
        }
    }

    fn query(&mut self, query: &Query, visitor: &mut impl Visitor) {
        for stmt in &query.stmts {
            for modifier in &stmt.with_mods {
                visitor.with_target(&modifier.refr);
                self.exprs.push(modifier.refr.clone());
                self.exprs.push(modifier.r#as.clone());
            }
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    self.exprs.extend(key.iter().cloned());
                    self.exprs.push(value.clone());
                    self.exprs.push(collection.clone());
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => {
                    self.exprs.push(expr.clone());
                }
                Literal::Every { domain, query, .. } => {
                    self.exprs.push(domain.clone());
                    self.queries.push(query.clone());
                }
            }
        }
    }

    /// Queues the children of `expr`. A call's children are its arguments only: its function
    /// path names a function, it reads no value.
    fn children(&mut self, expr: &Expr) {
        match expr {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. }
            | Expr::Var { .. } => {}
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                self.exprs.extend(items.iter().cloned());
            }
            Expr::Object { fields, .. } => {
                for (_, key, value) in fields {
                    self.exprs.push(key.clone());
                    self.exprs.push(value.clone());
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.exprs.push(term.clone());
                self.queries.push(query.clone());
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.exprs.push(key.clone());
                self.exprs.push(value.clone());
                self.queries.push(query.clone());
            }
            Expr::Call { params, .. } => {
                self.exprs.extend(params.iter().cloned());
            }
            Expr::UnaryExpr { expr, .. } => self.exprs.push(expr.clone()),
            Expr::RefDot { refr, .. } => self.exprs.push(refr.clone()),
            Expr::RefBrack { refr, index, .. } => {
                self.exprs.push(refr.clone());
                self.exprs.push(index.clone());
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.exprs.push(lhs.clone());
                self.exprs.push(rhs.clone());
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                self.exprs.extend(key.iter().cloned());
                self.exprs.push(value.clone());
                self.exprs.push(collection.clone());
            }
        }
    }
}
