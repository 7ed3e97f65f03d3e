//! A drawing backend wrapper that renders text with an embedded TrueType font (DejaVu Sans,
//! from the `dejavu` crate, rasterised by `ab_glyph` with anti-aliasing), so PNG plots have
//! readable labels at any size and need no font on the machine.
//!
//! plotters draws bitmap text through a font engine that looks fonts up on the system. This
//! wrapper keeps every shape call of the inner backend and replaces only text measurement
//! and text drawing: glyphs are laid out with the font's advances and kerning at the
//! requested pixel size, anchored and rotated as plotters asks, and each pixel is drawn
//! with the glyph's coverage as its alpha. Characters the font lacks are drawn as its
//! missing-glyph box. SVG output does not need this: SVG text is laid out by the viewer.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontTransform,
};

/// Wraps a backend; text is drawn with the embedded font.
pub struct GlyphBackend<B: DrawingBackend> {
    inner: B,
}

impl<B: DrawingBackend> GlyphBackend<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        GlyphBackend { inner }
    }
}

/// The embedded font, parsed once.
fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| {
        FontRef::try_from_slice(dejavu::sans::regular()).expect("the embedded DejaVu Sans parses")
    })
}

/// Glyphs of `text` with their pen positions (x of each glyph's origin), and the text's
/// width and height in pixels at `size` (height: ascent to descent).
fn layout(text: &str, size: f64) -> (Vec<(GlyphId, f32)>, f32, f32) {
    let scaled = font().as_scaled(PxScale::from(size.max(1.0) as f32));
    let mut glyphs = Vec::with_capacity(text.len());
    let mut x = 0.0f32;
    let mut prev: Option<GlyphId> = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = prev {
            x += scaled.kern(p, id);
        }
        glyphs.push((id, x));
        x += scaled.h_advance(id);
        prev = Some(id);
    }
    (glyphs, x, scaled.ascent() - scaled.descent())
}

/// Width and height in whole pixels of `text` drawn unrotated at `size`.
fn text_size(text: &str, size: f64) -> (i32, i32) {
    let (_, w, h) = layout(text, size);
    (w.ceil() as i32, h.ceil() as i32)
}

impl<B: DrawingBackend> DrawingBackend for GlyphBackend<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (w, h) = text_size(text, style.size());
        Ok((w as u32, h as u32))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let (glyphs, width, height) = layout(text, style.size());
        let dx = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0.0,
            VPos::Center => -height / 2.0,
            VPos::Bottom => -height,
        };
        let scale = PxScale::from(style.size().max(1.0) as f32);
        let ascent = font().as_scaled(scale).ascent();
        let quarters = transform_of(&style.transform());
        let (w, h) = self.inner.get_size();
        for (id, x) in glyphs {
            let glyph = id.with_scale_and_position(scale, ab_glyph::point(dx + x, dy + ascent));
            let Some(outline) = font().outline_glyph(glyph) else {
                continue; // a space
            };
            let bounds = outline.px_bounds();
            let mut pixels = Vec::new();
            outline.draw(|gx, gy, coverage| {
                if coverage > 0.0 {
                    pixels.push((
                        bounds.min.x as i32 + gx as i32,
                        bounds.min.y as i32 + gy as i32,
                        coverage,
                    ));
                }
            });
            // Pixels are placed in text coordinates, then rotated about the anchor.
            for (x, y, coverage) in pixels {
                let (x, y) = rotate(quarters, x, y);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                    let c = BackendColor {
                        alpha: color.alpha * f64::from(coverage.min(1.0)),
                        rgb: color.rgb,
                    };
                    self.inner.draw_pixel((x, y), c)?;
                }
            }
        }
        Ok(())
    }
}

/// Quarter turns clockwise of a font transform.
fn transform_of(t: &FontTransform) -> u8 {
    match t {
        FontTransform::None => 0,
        FontTransform::Rotate90 => 1,
        FontTransform::Rotate180 => 2,
        FontTransform::Rotate270 => 3,
    }
}

/// Rotates a point by quarter turns clockwise (screen coordinates, y down), as plotters does.
fn rotate(quarters: u8, x: i32, y: i32) -> (i32, i32) {
    match quarters {
        1 => (-y, x),
        2 => (-x, -y),
        3 => (y, -x),
        _ => (x, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_measured_with_the_fonts_advances() {
        let (w14, h14) = text_size("Reward model accuracy", 14.0);
        let (w28, h28) = text_size("Reward model accuracy", 28.0);
        // proportional: an `i` is narrower than an `M`, and twice the size is twice as wide
        assert!(text_size("iiii", 14.0).0 < text_size("MMMM", 14.0).0);
        assert!((w28 - 2 * w14).abs() <= 2, "{w14} {w28}");
        // ab_glyph scales so that ascent minus descent is the pixel size
        assert!(
            (13..=15).contains(&h14) && (h28 - 2 * h14).abs() <= 2,
            "{h14} {h28}"
        );
        assert_eq!(text_size("", 14.0).0, 0);
    }

    #[test]
    fn labels_are_drawn_with_antialiased_glyphs_inside_their_measured_box() {
        use plotters::prelude::*;
        let mut buf = vec![255u8; 200 * 60 * 3];
        {
            let root = GlyphBackend::new(BitMapBackend::with_buffer(&mut buf, (200, 60)))
                .into_drawing_area();
            root.draw(&Text::new(
                "KL 0.5",
                (10, 10),
                ("sans-serif", 24).into_font().color(&BLACK),
            ))
            .unwrap();
            root.present().unwrap();
        }
        let (tw, th) = text_size("KL 0.5", 24.0);
        let mut dark = 0;
        let mut grey = 0;
        for y in 0..60 {
            for x in 0..200 {
                let v = buf[(y * 200 + x) * 3];
                if v < 250 {
                    assert!(
                        (10..=10 + tw).contains(&(x as i32))
                            && (10..=10 + th).contains(&(y as i32)),
                        "ink at ({x}, {y}) outside the measured box {tw}x{th}"
                    );
                }
                if v < 64 {
                    dark += 1;
                } else if v < 250 {
                    grey += 1;
                }
            }
        }
        assert!(dark > 60, "solid glyph pixels: {dark}");
        assert!(grey > 20, "anti-aliased edge pixels: {grey}");
    }

    #[test]
    fn rotation_matches_plotters() {
        for (q, t) in [
            (0, FontTransform::None),
            (1, FontTransform::Rotate90),
            (2, FontTransform::Rotate180),
            (3, FontTransform::Rotate270),
        ] {
            assert_eq!(rotate(q, 3, 5), t.transform(3, 5));
        }
    }
}
