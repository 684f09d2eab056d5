//! SVG charts (plotters, SVG backend only): horizontal bars, one row per variant.

use crate::controller::ControllerReport;
use crate::filters::FiltersReport;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;

const PALETTE: [RGBColor; 4] = [
    RGBColor(0x2b, 0x6c, 0xb0),
    RGBColor(0xe0, 0x7b, 0x39),
    RGBColor(0x4a, 0x9c, 0x5d),
    RGBColor(0x8e, 0x5e, 0xa8),
];

pub struct Bars<'a> {
    pub title: &'a str,
    pub unit: &'a str,
    pub series: &'a [&'a str],
    pub rows: Vec<(String, Vec<f64>)>,
    /// A vertical reference line (e.g. 1.0 for ratios).
    pub reference: Option<f64>,
    pub decimals: usize,
}

pub fn hbars(path: &Path, b: &Bars<'_>) -> Result<()> {
    let label_w = 360i32;
    let bar_w = 470i32;
    let width = (label_w + bar_w + 110) as u32;
    let ns = b.series.len().max(1) as i32;
    let bar_h = 16i32;
    let row_h = ns * bar_h + 8;
    let top = if b.series.len() > 1 { 58 } else { 40 };
    let height = (top + row_h * b.rows.len() as i32 + 30) as u32;
    let max = b
        .rows
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .chain(b.reference)
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.05;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let font = |size: i32| ("sans-serif", size).into_font();
    root.draw(&Text::new(
        b.title.to_string(),
        (10, 10),
        font(19).color(&BLACK),
    ))
    .map_err(|e| err(&e))?;
    if b.series.len() > 1 {
        let mut x = label_w;
        for (i, s) in b.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            root.draw(&Rectangle::new([(x, 34), (x + 12, 46)], c.filled()))
                .map_err(|e| err(&e))?;
            root.draw(&Text::new(
                s.to_string(),
                (x + 16, 34),
                font(15).color(&BLACK),
            ))
            .map_err(|e| err(&e))?;
            x += 30 + 8 * s.len() as i32;
        }
    }
    let scale = |v: f64| label_w + ((v / max) * bar_w as f64).round() as i32;
    for (r, (label, vals)) in b.rows.iter().enumerate() {
        let y0 = top + r as i32 * row_h;
        if r % 2 == 1 {
            root.draw(&Rectangle::new(
                [(0, y0), (width as i32, y0 + row_h)],
                RGBColor(0xf3, 0xf5, 0xf8).filled(),
            ))
            .map_err(|e| err(&e))?;
        }
        root.draw(&Text::new(
            label.clone(),
            (10, y0 + row_h / 2 - 7),
            font(15).color(&BLACK),
        ))
        .map_err(|e| err(&e))?;
        for (i, v) in vals.iter().enumerate() {
            let yb = y0 + 4 + i as i32 * bar_h;
            let c = PALETTE[i % PALETTE.len()];
            if v.is_finite() {
                root.draw(&Rectangle::new(
                    [(label_w, yb), (scale(*v).max(label_w + 1), yb + bar_h - 2)],
                    c.filled(),
                ))
                .map_err(|e| err(&e))?;
                root.draw(&Text::new(
                    format!("{:.*} {}", b.decimals, v, b.unit),
                    (scale(*v) + 4, yb),
                    font(14).color(&BLACK),
                ))
                .map_err(|e| err(&e))?;
            } else {
                root.draw(&Text::new(
                    "not measured".to_string(),
                    (label_w + 4, yb),
                    font(14).color(&RGBColor(0x99, 0x33, 0x33)),
                ))
                .map_err(|e| err(&e))?;
            }
        }
    }
    if let Some(rf) = b.reference {
        let x = scale(rf);
        let y1 = top + row_h * b.rows.len() as i32;
        root.draw(&PathElement::new(
            vec![(x, top - 2), (x, y1 + 2)],
            RGBColor(0x55, 0x55, 0x55).stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
        root.draw(&Text::new(
            format!("{rf}"),
            (x - 6, y1 + 6),
            font(14).color(&BLACK),
        ))
        .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

pub fn filters_charts(r: &FiltersReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let label = |v: &crate::filters::VariantResult| v.variant.label.clone();
    let pick = |f: &dyn Fn(&crate::filters::Summary) -> f64,
                g: &dyn Fn(&crate::filters::Summary) -> f64| {
        r.variants
            .iter()
            .map(|v| {
                let m = v.median.as_ref();
                (
                    label(v),
                    vec![m.map(f).unwrap_or(f64::NAN), m.map(g).unwrap_or(f64::NAN)],
                )
            })
            .collect::<Vec<_>>()
    };
    let one = |f: &dyn Fn(&crate::filters::VariantResult) -> Option<f64>| {
        r.variants
            .iter()
            .map(|v| (label(v), vec![f(v).unwrap_or(f64::NAN)]))
            .collect::<Vec<_>>()
    };
    hbars(
        &dir.join("filters-throughput.svg"),
        &Bars {
            title: "Requests/s relative to no filter (median; 1 Envoy worker, 16 connections)",
            unit: "×",
            series: &["req/s ÷ no filter"],
            rows: one(&|v| v.ratio_to_none.as_ref().map(|x| x.rps)),
            reference: Some(1.0),
            decimals: 2,
        },
    )?;
    hbars(
        &dir.join("filters-cpu.svg"),
        &Bars {
            title: "Envoy CPU time per request (µs, median; lower is better)",
            unit: "µs",
            series: &["CPU µs/request"],
            rows: one(&|v| v.median.as_ref().map(|x| x.cpu_us_per_request)),
            reference: None,
            decimals: 1,
        },
    )?;
    hbars(
        &dir.join("filters-latency.svg"),
        &Bars {
            title: "Latency at saturation (µs, median of rounds; lower is better)",
            unit: "µs",
            series: &["p50", "p99"],
            rows: pick(&|m| m.p50_us, &|m| m.p99_us),
            reference: None,
            decimals: 0,
        },
    )?;
    hbars(
        &dir.join("filters-rss.svg"),
        &Bars {
            title: "Envoy resident memory after the run (MiB)",
            unit: "MiB",
            series: &["RSS"],
            rows: one(&|v| v.median.as_ref().map(|x| x.rss_mib)),
            reference: None,
            decimals: 1,
        },
    )?;
    Ok(())
}

pub fn controller_charts(r: &ControllerReport, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let rows: Vec<(String, Vec<f64>)> = r
        .translate
        .iter()
        .map(|t| (format!("{} HTTPRoutes", t.routes), vec![t.median_ms]))
        .collect();
    hbars(
        &dir.join("controller-translate.svg"),
        &Bars {
            title: "portcullis translate: wall time (ms, median)",
            unit: "ms",
            series: &["translate"],
            rows,
            reference: None,
            decimals: 0,
        },
    )?;
    let mut rows: Vec<(String, Vec<f64>)> = vec![];
    for t in &r.translate {
        rows.push((
            format!("translate, {} HTTPRoutes", t.routes),
            vec![t.peak_rss_mib],
        ));
    }
    for c in &r.convergence {
        rows.push((
            format!("portcullis run, {} HTTPRoutes", c.routes),
            vec![if c.error.is_none() {
                c.controller_peak_rss_mib
            } else {
                f64::NAN
            }],
        ));
    }
    rows.push((
        "Envoy Gateway v1.9.0, 10 routes (their figure)".into(),
        vec![134.0],
    ));
    rows.push((
        "Envoy Gateway v1.9.0, 1,000 routes (their figure)".into(),
        vec![263.0],
    ));
    hbars(
        &dir.join("controller-memory.svg"),
        &Bars {
            title:
                "Control-plane peak memory (MiB); Envoy Gateway rows are their published numbers",
            unit: "MiB",
            series: &["peak RSS"],
            rows,
            reference: None,
            decimals: 1,
        },
    )?;
    let rows: Vec<(String, Vec<f64>)> = r
        .convergence
        .iter()
        .map(|c| {
            (
                format!("{} HTTPRoutes", c.routes),
                vec![if c.error.is_none() {
                    c.median_ms
                } else {
                    f64::NAN
                }],
            )
        })
        .collect();
    hbars(
        &dir.join("controller-convergence.svg"),
        &Bars {
            title: "File change → every Envoy ACKed (ms, median)",
            unit: "ms",
            series: &["change → ACK"],
            rows,
            reference: None,
            decimals: 0,
        },
    )?;
    Ok(())
}
