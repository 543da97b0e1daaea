// Communs maps: MapLibre GL, no remote tiles, fonts or sprites. The style is built here
// from the commune's boundary (GeoJSON of /api/communes); every page that has a map also
// offers the same by address or as a list, so the pages work without it.
(() => {
  "use strict";

  const EMPTY = { type: "FeatureCollection", features: [] };

  function baseStyle() {
    return {
      version: 8,
      sources: { boundary: { type: "geojson", data: EMPTY }, points: { type: "geojson", data: EMPTY } },
      layers: [
        { id: "background", type: "background", paint: { "background-color": "#eef1f4" } },
        { id: "boundary-fill", type: "fill", source: "boundary", paint: { "fill-color": "#ffffff", "fill-opacity": 0.9 } },
        { id: "boundary-line", type: "line", source: "boundary", paint: { "line-color": "#1f4e8c", "line-width": 2 } },
        {
          id: "points", type: "circle", source: "points",
          paint: { "circle-radius": 7, "circle-color": "#b3261e", "circle-stroke-color": "#ffffff", "circle-stroke-width": 2 },
        },
      ],
    };
  }

  function makeMap(container, bbox) {
    if (!window.maplibregl) return null;
    try {
      const map = new maplibregl.Map({
        container,
        style: baseStyle(),
        bounds: bbox || [-5.2, 41.3, 9.6, 51.1],
        fitBoundsOptions: { padding: 20 },
        attributionControl: false,
      });
      map.addControl(new maplibregl.NavigationControl({ showCompass: false }));
      return map;
    } catch (error) {
      container.hidden = true;  // no WebGL: the address field and the list remain
      return null;
    }
  }

  async function loadBoundary(map, slug) {
    const response = await fetch("/api/communes");
    if (!response.ok) return;
    const commune = (await response.json()).find((item) => item.slug === slug);
    if (commune && commune.boundary) {
      map.getSource("boundary").setData({ type: "Feature", geometry: commune.boundary, properties: {} });
    }
  }

  function parseBbox(text) {
    const parts = (text || "").split(",").map(Number);
    return parts.length === 4 && parts.every(Number.isFinite) ? [[parts[0], parts[1]], [parts[2], parts[3]]] : null;
  }

  // ------------------------------------------------------------ reporting form

  function reportForm(container) {
    const form = container.closest("form");
    const slug = container.dataset.commune;
    const lon = form.querySelector("#field-lon");
    const lat = form.querySelector("#field-lat");
    const status = form.querySelector("#location-status");
    const address = form.querySelector("#address-query");
    const category = form.querySelector("#field-service_code");
    const labels = container.dataset;  // translated texts: data-placed, data-centre…
    const map = makeMap(container, parseBbox(container.dataset.bbox));
    let marker = null;

    async function place(point, source) {
      lon.value = point.lng.toFixed(7);
      lat.value = point.lat.toFixed(7);
      if (map) {
        if (!marker) {
          marker = new maplibregl.Marker({ draggable: true, color: "#b3261e" }).setLngLat(point).addTo(map);
          marker.on("dragend", () => place(marker.getLngLat(), "map"));
        } else {
          marker.setLngLat(point);
        }
      }
      status.textContent = `${labels.placed} ${lat.value}, ${lon.value}`;
      if (source !== "address") {
        const url = `/${slug}/api/addresses/reverse?lon=${lon.value}&lat=${lat.value}`;
        const response = await fetch(url);
        if (response.ok) {
          const found = (await response.json()).features[0];
          if (found && found.properties.distance < 100) address.value = found.properties.label;
        }
      }
      nearby();
    }

    function nearby() {
      if (!window.htmx || !lon.value || !category.value) return;
      htmx.ajax("GET", `/${slug}/signalements/proches?lon=${lon.value}&lat=${lat.value}&categorie=${encodeURIComponent(category.value)}`, "#nearby");
    }

    address.addEventListener("change", () => {
      const option = [...document.querySelectorAll("#address-options option")].find((o) => o.value === address.value);
      if (option) {
        const point = { lng: Number(option.dataset.lon), lat: Number(option.dataset.lat) };
        place(point, "address");
        if (map) map.flyTo({ center: point, zoom: 17 });
      } else {
        lon.value = "";  // a typed address is located by the server on submit
        lat.value = "";
      }
    });
    category.addEventListener("change", nearby);

    if (map) {
      map.on("load", () => loadBoundary(map, slug));
      map.on("click", (event) => place(event.lngLat, "map"));
      const centre = document.createElement("button");
      centre.type = "button";
      centre.className = "button button-secondary";
      centre.textContent = labels.centre;
      centre.addEventListener("click", () => place(map.getCenter(), "map"));
      container.after(centre);
      if (lon.value && lat.value) place({ lng: Number(lon.value), lat: Number(lat.value) }, "address");
    }
    const locate = form.querySelector("#locate-me");
    if (navigator.geolocation && locate) {
      locate.hidden = false;
      locate.addEventListener("click", () => {
        status.textContent = labels.locating;
        navigator.geolocation.getCurrentPosition(
          (position) => {
            const point = { lng: position.coords.longitude, lat: position.coords.latitude };
            place(point, "map");
            if (map) map.flyTo({ center: point, zoom: 17 });
          },
          () => { status.textContent = labels.unavailable; },
        );
      });
    }
  }

  // ------------------------------------------------------------ public map of reports

  function reportsMap(container) {
    const points = JSON.parse(container.dataset.points || "[]");
    const map = makeMap(container, null);
    if (!map) return;
    map.on("load", () => {
      map.getSource("points").setData({
        type: "FeatureCollection",
        features: points.map((p) => ({ type: "Feature", geometry: { type: "Point", coordinates: [p.lon, p.lat] }, properties: p })),
      });
      if (points.length) {
        const bounds = new maplibregl.LngLatBounds();
        points.forEach((p) => bounds.extend([p.lon, p.lat]));
        map.fitBounds(bounds, { padding: 40, maxZoom: 16, duration: 0 });
      }
    });
    map.on("click", "points", (event) => {
      window.location.href = container.dataset.link + event.features[0].properties.id;
    });
    map.on("mouseenter", "points", () => { map.getCanvas().style.cursor = "pointer"; });
    map.on("mouseleave", "points", () => { map.getCanvas().style.cursor = ""; });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("report-map");
    if (form) reportForm(form);
    const list = document.getElementById("reports-map");
    if (list) reportsMap(list);
  });
})();
