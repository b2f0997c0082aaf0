/// Inline SVG for the dashboard: the usage chart (stacked bars per slot, forwarded requests
/// then refusals by decision code, and credits as a line on a second axis) and per-key
/// sparklines. No script: hovering a bar shows its `<title>`.
enum DashboardChart {
    static let width = 1160.0, height = 300.0
    static let left = 58.0, right = 62.0, top = 22.0, bottom = 38.0
    static let creditsColor = "#364fc7"

    /// Fill colour of a decision code (`OK`: forwarded).
    static func color(_ code: String) -> String {
        switch code {
        case "OK": return "#37b24d"
        case "RATE_LIMITED": return "#f59f00"
        case "QUOTA_EXCEEDED": return "#e8590c"
        case "INSUFFICIENT_CREDITS": return "#ae3ec9"
        case "REVOKED": return "#e03131"
        case "DISABLED": return "#868e96"
        case "EXPIRED": return "#a61e4d"
        case "INSUFFICIENT_SCOPE": return "#1c7ed6"
        case "IP_DENIED": return "#5f3dc4"
        case "HTTPS_REQUIRED": return "#0c8599"
        case "LOCKED_OUT": return "#343a40"
        case "UPSTREAM_UNAVAILABLE": return "#c2255c"
        case "STORE_UNAVAILABLE": return "#d9480f"
        default: return "#adb5bd"
        }
    }

    /// Indices (``MetricCode``) of the codes refused at least once in `slots`, in code order.
    static func refusedCodes(_ slots: [UsageAggregates.Bucket]) -> [Int] {
        (0..<MetricCode.count).filter { c in c != MetricCode.ok && slots.contains { c < $0.refusals.count && $0.refusals[c] > 0 } }
    }

    /// The axis top: four equal steps of 1, 2, 2.5 or 5 × 10ⁿ that reach `v` (at least 4).
    static func niceTop(_ v: Int64) -> Int64 {
        guard v > 4 else { return 4 }
        var magnitude: Int64 = 1
        while magnitude < Int64.max / 100 {
            for step in [magnitude, magnitude * 2, magnitude >= 10 ? magnitude * 5 / 2 : magnitude * 2, magnitude * 5]
            where step * 4 >= v { return step * 4 }
            magnitude *= 10
        }
        return v
    }

    static func number(_ v: Double) -> String {
        let r = (v * 10).rounded() / 10
        return r == r.rounded() ? String(Int64(r)) : String(r)
    }

    /// The usage chart (`id="usage-chart"`).
    static func usage(_ slots: [UsageAggregates.Bucket], starts: [Int64], window: DashboardWindow) -> String {
        let n = max(1, slots.count)
        let plotW = width - left - right, plotH = height - top - bottom
        let slotW = plotW / Double(n)
        let barW = max(1, slotW * (n > 40 ? 0.8 : 0.68))
        let maxRequests = slots.map(\.requests).max() ?? 0
        let yTop = niceTop(maxRequests)
        let maxCredits = slots.map(\.credits).max() ?? 0
        let cTop = niceTop(maxCredits)
        let codes = refusedCodes(slots)
        func y(_ v: Int64, _ top: Int64) -> Double { self.top + plotH - Double(v) / Double(top) * plotH }

        var s = "<svg id=\"usage-chart\" class=\"chart\" role=\"img\" viewBox=\"0 0 \(number(width)) \(number(height))\" "
        s += "xmlns=\"http://www.w3.org/2000/svg\" aria-label=\"Requests per slot, forwarded and refused by code, with credits charged\">"
        s += "<title>Usage, \(DashboardPage.escape(window.label)) (UTC)</title>"
        // Grid and the requests axis.
        for i in 0...4 {
            let v = yTop * Int64(i) / 4
            let yy = number(y(v, yTop))
            s += "<line class=\"grid\" x1=\"\(number(left))\" x2=\"\(number(width - right))\" y1=\"\(yy)\" y2=\"\(yy)\" "
            s += "stroke=\"\(i == 0 ? "#adb5bd" : "#e9ecef")\" stroke-width=\"1\"/>"
            s += "<text x=\"\(number(left - 8))\" y=\"\(number(y(v, yTop) + 4))\" text-anchor=\"end\" class=\"tick\">\(DashboardPage.count(v))</text>"
            if maxCredits > 0 {
                let c = cTop * Int64(i) / 4
                s += "<text x=\"\(number(width - right + 8))\" y=\"\(number(y(c, cTop) + 4))\" text-anchor=\"start\" class=\"tick credits\" fill=\"\(creditsColor)\">\(DashboardPage.count(c))</text>"
            }
        }
        s += "<text x=\"4\" y=\"12\" text-anchor=\"start\" class=\"axis\">requests</text>"
        if maxCredits > 0 {
            s += "<text x=\"\(number(width - 4))\" y=\"12\" text-anchor=\"end\" class=\"axis\" fill=\"\(creditsColor)\">credits</text>"
        }
        // Bars: forwarded at the bottom, then each refusal code.
        s += "<g class=\"bars\">"
        for (i, b) in slots.enumerated() where b.requests > 0 {
            let x = left + Double(i) * slotW + (slotW - barW) / 2
            var tip = "\(slotLabel(starts[i], window)) UTC: \(b.requests) request\(b.requests == 1 ? "" : "s"), \(b.forwarded) forwarded"
            for c in codes where b.refusals[c] > 0 { tip += ", \(b.refusals[c]) \(MetricCode.names[c])" }
            if b.credits > 0 { tip += ", \(b.credits) credits" }
            s += "<g class=\"slot\"><title>\(DashboardPage.escape(tip))</title>"
            var base: Int64 = 0
            for (code, v) in [(MetricCode.ok, b.forwarded)] + codes.map({ ($0, b.refusals[$0]) }) where v > 0 {
                let y1 = y(base + v, yTop), y0 = y(base, yTop)
                s += "<rect x=\"\(number(x))\" y=\"\(number(y1))\" width=\"\(number(barW))\" height=\"\(number(max(0.5, y0 - y1)))\" "
                s += "fill=\"\(color(MetricCode.names[code]))\" data-code=\"\(MetricCode.names[code])\"/>"
                base += v
            }
            s += "</g>"
        }
        s += "</g>"
        // Credits: a dot per slot that charged any, joined where neighbours both did.
        if maxCredits > 0 {
            s += "<g class=\"credits\">"
            func point(_ i: Int) -> (String, String) { (number(left + (Double(i) + 0.5) * slotW), number(y(slots[i].credits, cTop))) }
            for i in slots.indices where slots[i].credits > 0 {
                let (x, yy) = point(i)
                if i > 0, slots[i - 1].credits > 0 {
                    let (px, py) = point(i - 1)
                    s += "<line x1=\"\(px)\" y1=\"\(py)\" x2=\"\(x)\" y2=\"\(yy)\" stroke=\"\(creditsColor)\" stroke-width=\"2\"/>"
                }
                s += "<circle cx=\"\(x)\" cy=\"\(yy)\" r=\"3.5\" fill=\"#fff\" stroke=\"\(creditsColor)\" stroke-width=\"2\"/>"
            }
            s += "</g>"
        }
        // The time axis.
        let step = labelStep(window)
        for (i, start) in starts.enumerated() where (start / window.slotSeconds) % step == 0 {
            let x = left + (Double(i) + 0.5) * slotW
            s += "<line x1=\"\(number(x))\" x2=\"\(number(x))\" y1=\"\(number(top + plotH))\" y2=\"\(number(top + plotH + 5))\" stroke=\"#adb5bd\"/>"
            s += "<text x=\"\(number(x))\" y=\"\(number(top + plotH + 20))\" text-anchor=\"middle\" class=\"tick\">\(DashboardPage.escape(axisLabel(start, window)))</text>"
        }
        if maxRequests == 0 {
            s += "<text x=\"\(number(left + plotW / 2))\" y=\"\(number(top + plotH / 2))\" text-anchor=\"middle\" class=\"empty\">No requests in this window</text>"
        }
        return s + "</svg>"
    }

    /// A key's trend: one bar per slot, forwarded and refused (`class="spark"`).
    static func sparkline(_ slots: [UsageAggregates.Bucket], id: String) -> String {
        let w = 132.0, h = 28.0
        let top = max(1, slots.map(\.requests).max() ?? 0)
        let n = max(1, slots.count)
        let slotW = w / Double(n)
        var s = "<svg class=\"spark\" viewBox=\"0 0 \(number(w)) \(number(h))\" width=\"\(number(w))\" height=\"\(number(h))\" "
        s += "xmlns=\"http://www.w3.org/2000/svg\" aria-label=\"trend of \(DashboardPage.escape(id))\">"
        s += "<line x1=\"0\" x2=\"\(number(w))\" y1=\"\(number(h - 0.5))\" y2=\"\(number(h - 0.5))\" stroke=\"#dee2e6\"/>"
        for (i, b) in slots.enumerated() where b.requests > 0 {
            let x = Double(i) * slotW
            let bw = max(1, slotW - (slotW > 3 ? 1 : 0))
            let total = max(1, Double(b.requests) / Double(top) * (h - 2))
            let refused = Double(b.refused) / Double(b.requests) * total
            s += "<rect x=\"\(number(x))\" y=\"\(number(h - 1 - total))\" width=\"\(number(bw))\" height=\"\(number(total - refused))\" fill=\"#37b24d\"/>"
            if refused > 0 {
                s += "<rect x=\"\(number(x))\" y=\"\(number(h - 1 - refused))\" width=\"\(number(bw))\" height=\"\(number(refused))\" fill=\"#e03131\"/>"
            }
        }
        return s + "</svg>"
    }

    /// Slots between two labels on the time axis.
    static func labelStep(_ w: DashboardWindow) -> Int64 {
        switch w {
        case .hour: return 10
        case .day: return 3
        case .week: return 4
        case .month: return 5
        }
    }

    static func axisLabel(_ t: Int64, _ w: DashboardWindow) -> String {
        let (date, clock) = DashboardPage.utc(t)
        switch w {
        case .hour, .day: return String(clock.prefix(5))
        case .week, .month: return String(date.dropFirst(5))
        }
    }

    static func slotLabel(_ t: Int64, _ w: DashboardWindow) -> String {
        let (date, clock) = DashboardPage.utc(t)
        switch w {
        case .hour, .day, .week: return date + " " + clock.prefix(5)
        case .month: return date
        }
    }
}
