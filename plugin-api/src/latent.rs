//! A latent held by the host, with arithmetic that reads like the k-diffusion formulas.

use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::abi::{BinaryOp, Reduction, ScalarOp, TensorId, Term, UnaryOp};
use crate::context::Context;

/// A latent-shaped tensor owned by the host; released when dropped.
///
/// Arithmetic on latents is carried out by the host on its device. `'c` is the borrow of the
/// sample call's [`Context`], `'a` the call itself.
pub struct Latent<'c, 'a> {
    context: &'c Context<'a>,
    id: TensorId,
}

impl<'c, 'a> Latent<'c, 'a> {
    pub(crate) fn from_id(context: &'c Context<'a>, id: TensorId) -> Self {
        Latent { context, id }
    }

    /// Gives up ownership of the handle without releasing it (the sampler's result).
    pub(crate) fn into_id(self) -> TensorId {
        let id = self.id;
        std::mem::forget(self);
        id
    }

    /// The raw handle (for the raw ABI; the latent keeps ownership).
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// Σ cᵢ·xᵢ in one host operation.
    pub fn combine(context: &'c Context<'a>, terms: &[(f64, &Latent<'c, 'a>)]) -> Self {
        let terms: Vec<Term> = terms
            .iter()
            .map(|(coefficient, latent)| Term {
                coefficient: *coefficient,
                tensor: latent.id,
            })
            .collect();
        let id = context.host().lincomb(terms.as_slice().into());
        Latent { context, id }
    }

    /// a·self + b·other, fused.
    pub fn mix(&self, a: f64, other: &Self, b: f64) -> Self {
        Self::combine(self.context, &[(a, self), (b, other)])
    }

    fn unary(&self, op: UnaryOp) -> Self {
        let id = self.context.host().unary(op, self.id);
        self.context.wrap(id)
    }

    fn binary(&self, op: BinaryOp, other: &Self) -> Self {
        let id = self.context.host().binary(op, self.id, other.id);
        self.context.wrap(id)
    }

    fn scalar(&self, op: ScalarOp, s: f64) -> Self {
        let id = self.context.host().scalar(op, self.id, s);
        self.context.wrap(id)
    }

    /// Elementwise |x|.
    pub fn abs(&self) -> Self {
        self.unary(UnaryOp::Abs)
    }

    /// Elementwise √x.
    pub fn sqrt(&self) -> Self {
        self.unary(UnaryOp::Sqrt)
    }

    /// Elementwise x².
    pub fn square(&self) -> Self {
        self.unary(UnaryOp::Square)
    }

    /// Elementwise product.
    pub fn mul(&self, other: &Self) -> Self {
        self.binary(BinaryOp::Mul, other)
    }

    /// Elementwise quotient.
    pub fn div(&self, other: &Self) -> Self {
        self.binary(BinaryOp::Div, other)
    }

    /// Elementwise maximum.
    pub fn maximum(&self, other: &Self) -> Self {
        self.binary(BinaryOp::Maximum, other)
    }

    /// Elementwise minimum.
    pub fn minimum(&self, other: &Self) -> Self {
        self.binary(BinaryOp::Minimum, other)
    }

    /// x + s elementwise.
    pub fn add_scalar(&self, s: f64) -> Self {
        self.scalar(ScalarOp::Add, s)
    }

    /// max(x, s) elementwise.
    pub fn max_scalar(&self, s: f64) -> Self {
        self.scalar(ScalarOp::Max, s)
    }

    /// min(x, s) elementwise.
    pub fn min_scalar(&self, s: f64) -> Self {
        self.scalar(ScalarOp::Min, s)
    }

    /// Euclidean norm over all elements of the batch.
    pub fn norm(&self) -> f64 {
        self.context.host().reduce(Reduction::Norm, self.id)
    }

    /// Largest absolute value.
    pub fn max_abs(&self) -> f64 {
        self.context.host().reduce(Reduction::MaxAbs, self.id)
    }

    /// Number of elements of the batch.
    pub fn numel(&self) -> usize {
        self.context.host().reduce(Reduction::Numel, self.id) as usize
    }
}

impl Clone for Latent<'_, '_> {
    /// Another handle to the same values; the host copies nothing.
    fn clone(&self) -> Self {
        let id = self.context.host().share(self.id);
        self.context.wrap(id)
    }
}

impl Drop for Latent<'_, '_> {
    fn drop(&mut self) {
        self.context.host().release(self.id);
    }
}

impl<'c, 'a> Add for &Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn add(self, other: Self) -> Latent<'c, 'a> {
        self.mix(1.0, other, 1.0)
    }
}

impl<'c, 'a> Sub for &Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn sub(self, other: Self) -> Latent<'c, 'a> {
        self.mix(1.0, other, -1.0)
    }
}

impl<'c, 'a> Mul<f64> for &Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn mul(self, s: f64) -> Latent<'c, 'a> {
        Latent::combine(self.context, &[(s, self)])
    }
}

impl<'c, 'a> Div<f64> for &Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn div(self, s: f64) -> Latent<'c, 'a> {
        Latent::combine(self.context, &[(1.0 / s, self)])
    }
}

impl<'c, 'a> Neg for &Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn neg(self) -> Latent<'c, 'a> {
        Latent::combine(self.context, &[(-1.0, self)])
    }
}

/// Owned operands forward to the borrowed ones, so `&x + &d * dt` reads naturally.
macro_rules! forward_owned {
    ($($trait:ident $method:ident),*) => {$(
        impl<'c, 'a> $trait<Latent<'c, 'a>> for Latent<'c, 'a> {
            type Output = Latent<'c, 'a>;
            fn $method(self, other: Latent<'c, 'a>) -> Latent<'c, 'a> {
                $trait::$method(&self, &other)
            }
        }
        impl<'c, 'a> $trait<&Latent<'c, 'a>> for Latent<'c, 'a> {
            type Output = Latent<'c, 'a>;
            fn $method(self, other: &Latent<'c, 'a>) -> Latent<'c, 'a> {
                $trait::$method(&self, other)
            }
        }
        impl<'c, 'a> $trait<Latent<'c, 'a>> for &Latent<'c, 'a> {
            type Output = Latent<'c, 'a>;
            fn $method(self, other: Latent<'c, 'a>) -> Latent<'c, 'a> {
                $trait::$method(self, &other)
            }
        }
    )*};
}
forward_owned!(Add add, Sub sub);

impl<'c, 'a> Mul<f64> for Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn mul(self, s: f64) -> Latent<'c, 'a> {
        &self * s
    }
}

impl<'c, 'a> Div<f64> for Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn div(self, s: f64) -> Latent<'c, 'a> {
        &self / s
    }
}

impl<'c, 'a> Neg for Latent<'c, 'a> {
    type Output = Latent<'c, 'a>;
    fn neg(self) -> Latent<'c, 'a> {
        -&self
    }
}
