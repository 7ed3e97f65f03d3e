//! A drawing backend wrapper that renders text with a built-in 8x8 bitmap font
//! (`font8x8`, public domain glyphs of basic Latin), so PNG plots need no system font.
//!
//! plotters draws bitmap text through a font engine (font-kit or ab_glyph), which needs a
//! font file on the machine. This wrapper keeps every shape call of the inner backend and
//! replaces only text measurement and text drawing: glyphs are scaled to the requested
//! size in whole pixels, anchored and rotated as plotters asks. Characters outside ASCII
//! are drawn as `?`. SVG output does not need this: SVG text is laid out by the viewer.

use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontTransform,
};

/// Pixels per glyph cell side at scale 1.
const CELL: i32 = 8;

/// Wraps a backend; text is drawn with the built-in bitmap font.
pub struct GlyphBackend<B: DrawingBackend> {
    inner: B,
}

impl<B: DrawingBackend> GlyphBackend<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        GlyphBackend { inner }
    }
}

/// Whole-pixel scale for a font size in pixels: 8 px glyphs at sizes up to 17, then 16 px.
fn scale_for(size: f64) -> i32 {
    ((size / 12.0).round() as i32).max(1)
}

/// The 8x8 bitmap of a character (row-major, bit 0 = leftmost pixel).
fn glyph(c: char) -> [u8; 8] {
    let code = if c.is_ascii() && !c.is_ascii_control() {
        c as usize
    } else {
        '?' as usize
    };
    font8x8::legacy::BASIC_LEGACY[code]
}

/// Width and height in pixels of `text` drawn unrotated at `scale`.
fn text_size(text: &str, scale: i32) -> (i32, i32) {
    (text.chars().count() as i32 * CELL * scale, CELL * scale)
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
        let (w, h) = text_size(text, scale_for(style.size()));
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
        let scale = scale_for(style.size());
        let (width, height) = text_size(text, scale);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Center => -width / 2,
            HPos::Right => -width,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.inner.get_size();
        for (i, c) in text.chars().enumerate() {
            let rows = glyph(c);
            for (gy, bits) in rows.iter().enumerate() {
                for gx in 0..CELL {
                    if bits & (1 << gx) == 0 {
                        continue;
                    }
                    // One glyph pixel is a scale x scale block, placed in text coordinates
                    // then rotated about the anchor.
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let x = dx + (i as i32 * CELL + gx) * scale + sx;
                            let y = dy + gy as i32 * scale + sy;
                            let (x, y) = rotate(transform_of(&transform), x, y);
                            let (x, y) = (pos.0 + x, pos.1 + y);
                            if x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                                self.inner.draw_pixel((x, y), color)?;
                            }
                        }
                    }
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
    fn glyphs_cover_ascii_and_replace_the_rest() {
        assert_eq!(glyph(' '), [0; 8]);
        assert_ne!(glyph('A'), [0; 8]);
        assert_eq!(glyph('é'), glyph('?'));
        assert_eq!(text_size("abc", 2), (48, 16));
        assert_eq!(scale_for(14.0), 1);
        assert_eq!(scale_for(24.0), 2);
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
