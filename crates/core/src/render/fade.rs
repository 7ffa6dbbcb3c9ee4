//! The fade of heat beyond the lungs' box.

use crate::mask::LungBox;

/// Heat faded to zero outside `lungs` (image pixels): 1 inside, falling linearly to 0 over
/// `margin` pixels outside, exactly 0 beyond. An explainer's map covers the classifier's whole
/// square crop; without this its low values would show the crop as a pale rectangle around the
/// lungs.
pub fn fade_outside(heat: &mut [f32], width: u32, height: u32, lungs: LungBox, margin: u32) {
    assert_eq!(heat.len(), width as usize * height as usize, "heat size");
    let margin = margin.max(1) as f32;
    for y in 0..height {
        let dy = beyond(y, lungs.y0, lungs.y1);
        for x in 0..width {
            let dx = beyond(x, lungs.x0, lungs.x1);
            if dx == 0 && dy == 0 {
                continue;
            }
            let d = (dx as f32).hypot(dy as f32);
            let weight = (1.0 - d / margin).max(0.0);
            heat[y as usize * width as usize + x as usize] *= weight;
        }
    }
}

/// How many pixels `v` lies outside the half-open span `lo..hi` (0 inside it).
fn beyond(v: u32, lo: u32, hi: u32) -> u32 {
    if v < lo {
        lo - v
    } else if v >= hi {
        v + 1 - hi
    } else {
        0
    }
}
