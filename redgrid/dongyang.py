"""Static facts and name pools for the Dongyang demo (used by ``redgrid.demo``).

The 18 towns and streets are real; their centroids are placed by hand from the city's
geography (the city government at 29.2785 N, 120.2282 E in 江北街道; 横店镇 spanning
29.09–29.22 N, 120.24–120.37 E). Villages, grids and people are synthetic.
All positions are WGS-84.
"""

from __future__ import annotations

from dataclasses import dataclass

CITY_CODE = "330783"
CITY_NAME = "东阳市"
CITY_GOV = (29.2785, 120.2282)  # 东阳市人民政府, 江北街道

# The demo covers the city; everything generated must fall inside this box.
BBOX = (28.95, 29.45, 120.05, 120.70)  # lat_min, lat_max, lng_min, lng_max


@dataclass(frozen=True)
class Town:
    idx: int  # 1..18: the town part of every code below it ("330783-03-...")
    name: str
    short: str
    street: bool  # 街道 (urban: 社区 and 村) or 镇/乡 (rural: mostly 村)
    lat: float
    lng: float
    radius_km: float  # villages are scattered within this radius of the centroid
    villages: int
    seat_road: str  # the main road of the town seat, for synthetic addresses

    @property
    def code(self) -> str:
        return f"{CITY_CODE}-{self.idx:02d}"


TOWNS: tuple[Town, ...] = (
    Town(1, "吴宁街道", "吴宁", True, 29.2660, 120.2450, 2.0, 14, "吴宁西路"),
    Town(2, "白云街道", "白云", True, 29.2740, 120.1900, 2.5, 10, "白云大道"),
    Town(3, "江北街道", "江北", True, 29.2900, 120.2330, 2.2, 14, "人民北路"),
    Town(4, "城东街道", "城东", True, 29.2850, 120.2750, 2.2, 10, "东义路"),
    Town(5, "南市街道", "南市", True, 29.2430, 120.2250, 2.5, 10, "南市路"),
    Town(6, "六石街道", "六石", True, 29.3200, 120.3000, 3.0, 10, "六石大道"),
    Town(7, "巍山镇", "巍山", False, 29.2900, 120.4700, 4.5, 14, "巍山大道"),
    Town(8, "虎鹿镇", "虎鹿", False, 29.3450, 120.4050, 4.0, 10, "虎鹿路"),
    Town(9, "歌山镇", "歌山", False, 29.2150, 120.4200, 4.0, 12, "歌山大道"),
    Town(10, "佐村镇", "佐村", False, 29.1650, 120.4550, 3.5, 8, "佐村路"),
    Town(11, "东阳江镇", "东阳江", False, 29.2650, 120.3450, 3.5, 10, "江滨路"),
    Town(12, "湖溪镇", "湖溪", False, 29.2250, 120.3050, 3.0, 12, "湖溪大道"),
    Town(13, "马宅镇", "马宅", False, 29.2050, 120.2550, 2.5, 8, "马宅路"),
    Town(14, "千祥镇", "千祥", False, 29.1900, 120.1400, 4.0, 10, "千祥大道"),
    Town(15, "南马镇", "南马", False, 29.1750, 120.2150, 3.0, 14, "南马大道"),
    Town(16, "画水镇", "画水", False, 29.1350, 120.1750, 4.0, 12, "画水路"),
    Town(17, "横店镇", "横店", False, 29.1500, 120.3150, 5.0, 16, "万盛街"),
    Town(18, "三单乡", "三单", False, 29.1150, 120.4250, 3.5, 6, "三单路"),
)

JIANGBEI = 3  # index of 江北街道
DONGFENG = "东丰村"  # under 江北街道; hosts the 博爱家园 (the demo's home village)
DONGFENG_POS = (29.2925, 120.2395)
DONGFENG_GRIDS = 4

# Syllables for synthetic village (村) and community (社区) names.
VILLAGE_FIRST = "东西南北上下前后新大小高横长石金马白黄青里中安兴卢楼杜湖塘溪岭山"
VILLAGE_SECOND = "丰溪塘山岭宅田源坑口桥园庄坞岩店塔头坂陈王周徐蒋厉叶后"
COMMUNITY_FIRST = "兴德民和振华安春绿锦望康文荣明吉瑞祥泰景紫"
COMMUNITY_SECOND = "平政安华园苑湖城兴福乐泰宁光都景秀和盛阳"

# Common surnames around Dongyang first (楼, 卢, 厉, 斯, 单 are local), with weights.
SURNAMES: tuple[tuple[str, int], ...] = (
    ("王", 12), ("陈", 10), ("张", 8), ("李", 7), ("吴", 7), ("金", 6), ("楼", 6), ("杜", 5),
    ("徐", 5), ("郭", 4), ("卢", 4), ("厉", 3), ("蒋", 4), ("何", 3), ("胡", 4), ("韦", 2),
    ("葛", 3), ("黄", 3), ("赵", 3), ("周", 3), ("马", 2), ("许", 2), ("单", 2), ("斯", 2),
    ("傅", 2), ("施", 2), ("朱", 3), ("应", 2), ("俞", 2), ("刘", 3), ("杨", 3), ("孙", 2),
    ("叶", 2), ("郑", 2), ("蔡", 1), ("沈", 1), ("包", 1), ("严", 1), ("贾", 1), ("程", 1),
)
GIVEN_CHARS = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国志海燕红玲晓婷雪慧鹏宇浩斌俊文"
    "辉梅兰凤琴云春林峰佳欣怡涵思雨晨嘉宏永德福荣忠新根富康亮波琳颖倩蕾璐悦瑶彬锋飞"
)

ROADS = (
    "人民路", "吴宁路", "江滨路", "振兴路", "兴平路", "八华路", "望江路", "环城路", "迎宾大道",
    "中山路", "艺海路", "西街", "东街", "学府路", "文化路", "新华街", "商城路", "工业路",
)

# AEDs at named places: (name, lat, lng, hours, address). The first three are the three
# nearest to the city government (80 m, 650 m, 1.1 km), as in CONVERSATIONS.md; generated
# AEDs keep at least 1.2 km away from it so that example holds.
AED_LANDMARKS: tuple[tuple[str, float, float, str, str], ...] = (
    ("东阳市人民政府一楼大厅", 29.27915, 120.22845, "24h", "东阳市江北街道人民北路1号"),
    ("江北街道社区卫生服务中心", 29.28430, 120.22860, "08:00-17:00", "东阳市江北街道振兴路56号"),
    ("东阳市人民医院门诊楼", 29.27000, 120.22200, "24h", "东阳市吴宁街道吴宁西路60号"),
    ("东丰村博爱家园", 29.29290, 120.24010, "08:00-20:00", "东阳市江北街道东丰村文化路8号"),
    ("江北街道文化礼堂", 29.28800, 120.23850, "08:00-21:00", "东阳市江北街道望江路12号"),
    ("东阳江滨公园北门", 29.27300, 120.24200, "24h", "东阳市江北街道江滨北街"),
    ("东阳市行政服务中心", 29.28800, 120.21800, "08:30-17:00", "东阳市江北街道迎宾大道9号"),
    ("东阳市红十字会", 29.28350, 120.21500, "08:30-17:00", "东阳市江北街道兴平路33号"),
    ("东阳市图书馆", 29.28600, 120.24100, "08:30-20:30", "东阳市江北街道艺海路18号"),
    ("东阳市中医院急诊大厅", 29.26200, 120.24600, "24h", "东阳市吴宁街道中山路201号"),
    ("东阳中学体育馆", 29.26000, 120.23800, "07:00-21:30", "东阳市吴宁街道学府路1号"),
    ("卢宅景区游客中心", 29.27000, 120.26200, "08:00-17:30", "东阳市吴宁街道卢宅街"),
    ("东阳市体育中心", 29.28800, 120.26500, "06:00-22:00", "东阳市城东街道东义路88号"),
    ("东阳火车站候车厅", 29.30500, 120.27000, "06:00-22:00", "东阳市城东街道站前路"),
    ("东阳汽车客运中心", 29.27800, 120.20500, "05:30-20:30", "东阳市白云街道白云大道300号"),
    ("中国木雕城", 29.24500, 120.23000, "08:30-17:30", "东阳市南市街道木雕城路1号"),
    ("东阳市第二人民医院门诊大厅", 29.28800, 120.46500, "24h", "东阳市巍山镇巍山大道101号"),
    ("横店文荣医院门诊大厅", 29.16000, 120.30500, "24h", "东阳市横店镇医学路99号"),
    ("横店影视城游客服务中心", 29.15300, 120.31500, "07:30-18:00", "东阳市横店镇万盛街"),
    ("横店影视城秦王宫景区", 29.14100, 120.29500, "08:00-17:30", "东阳市横店镇秦王宫"),
    ("横店影视城清明上河图景区", 29.15000, 120.33300, "08:00-17:30", "东阳市横店镇清明上河图"),
    ("横店影视城明清宫苑景区", 29.17200, 120.32400, "08:00-17:30", "东阳市横店镇明清宫苑"),
    ("横店影视城广州街·香港街景区", 29.14500, 120.30800, "08:00-17:30", "东阳市横店镇广州街"),
    ("横店影视城梦外滩景区", 29.15800, 120.33000, "08:00-22:00", "东阳市横店镇梦外滩"),
    ("横店圆明新园", 29.19000, 120.32000, "08:00-17:30", "东阳市横店镇圆明新园"),
    ("横店汽车站", 29.15800, 120.31000, "05:30-19:30", "东阳市横店镇康庄路"),
)
AED_TOTAL = 129  # the city's AED count

# Certificates: (skill, share of volunteers holding it, has an expiry date)
SKILLS: tuple[tuple[str, float, bool], ...] = (
    ("first_aid", 0.40, True),  # 救护员证 (3-year certificate)
    ("aed", 0.15, True),
    ("driver", 0.22, True),
    ("medical", 0.06, True),
    ("psych", 0.04, True),  # 心理支持
    ("water", 0.03, True),  # 净水设备
)

# Fixed personas for the chat simulator.
PERSONA_VOLUNTEER = "demo-volunteer"
PERSONA_GRID_WORKER = "demo-gridworker"
PERSONA_COORDINATOR = "demo-coordinator"
CITY_COORDINATOR = "demo-coord-city"

QUIET_HOURS = ((22 * 60, 7 * 60), (21 * 60 + 30, 6 * 60 + 30), (23 * 60, 7 * 60), (12 * 60, 14 * 60))


@dataclass(frozen=True)
class ShiftTemplate:
    kind: str
    title: str
    place: str  # "{village}", "{town}" and "{short}" are filled in
    at_village: bool  # placed at a village (else at the town seat)
    start: tuple[int, int]  # local (Asia/Shanghai) hour, minute
    minutes: int
    slots: tuple[int, int]
    skills: tuple[str, ...] = ()
    description: str = ""


SHIFT_TEMPLATES: tuple[ShiftTemplate, ...] = (
    ShiftTemplate("checkpoint", "卡口值守", "{short}高速出口卡口", False, (8, 0), 240, (4, 8),
                  description="协助测温登记、疏导车辆，请穿红马甲。"),
    ShiftTemplate("checkpoint", "卡口值守", "{village}村口卡口", True, (14, 0), 240, (2, 4)),
    ShiftTemplate("drill", "应急救护演练", "{village}文化礼堂", True, (14, 0), 120, (6, 10),
                  description="模拟心脏骤停现场，练习心肺复苏和AED使用。"),
    ShiftTemplate("drill", "消防疏散与救护演练", "{short}中心小学", False, (9, 30), 120, (6, 10),
                  ("first_aid",), "担任演练救护组，需持救护员证。"),
    ShiftTemplate("fridge_restock", "爱心冰柜补货", "{village}爱心驿站", True, (9, 0), 90, (2, 3),
                  description="为户外劳动者补充矿泉水和防暑药品。"),
    ShiftTemplate("dementia_outreach", "关爱阿尔兹海默症走访", "{village}", True, (9, 0), 120, (3, 5),
                  description="“爸妈，我们回家”：走访认知症老人家庭，发放防走失手环。"),
    ShiftTemplate("dementia_outreach", "“爸妈，我们回家”防走失宣传", "{town}便民服务中心", False,
                  (9, 0), 180, (3, 6)),
    ShiftTemplate("first_aid_cover", "赛事救护保障", "{short}体育场", False, (7, 30), 240, (4, 8),
                  ("first_aid",), "在医疗点值守，需持有效救护员证。"),
    ShiftTemplate("first_aid_cover", "大型活动救护值守", "{town}文化广场", False, (18, 30), 180, (3, 6),
                  ("first_aid", "aed")),
    ShiftTemplate("training", "救护员初级培训", "{town}便民服务中心", False, (9, 0), 180, (6, 10),
                  description="协助培训签到和分组练习。"),
    ShiftTemplate("training", "AED使用培训", "{village}文化礼堂", True, (14, 30), 120, (4, 8)),
    ShiftTemplate("publicity", "红十字知识宣传", "{short}农贸市场", False, (8, 30), 180, (4, 8),
                  description="发放宣传册，讲解应急救护常识。"),
    ShiftTemplate("publicity", "无偿献血宣传", "{town}便民服务中心", False, (9, 0), 180, (3, 6)),
    ShiftTemplate("publicity", "防溺水安全宣传", "{village}文化礼堂", True, (15, 0), 120, (3, 5)),
    ShiftTemplate("elderly_visit", "独居老人探访", "{village}", True, (15, 0), 120, (2, 4),
                  description="陪伴聊天、检查家中用电用气安全。"),
    ShiftTemplate("elderly_visit", "高龄老人上门关爱", "{village}", True, (9, 0), 120, (2, 3), ("medical",),
                  "为高龄老人测量血压血糖，需有医护背景。"),
    ShiftTemplate("other", "博爱家园环境整理", "{village}博爱家园", True, (9, 0), 120, (2, 5)),
    ShiftTemplate("other", "献血点引导服务", "{town}便民服务中心", False, (8, 30), 240, (2, 4)),
    ShiftTemplate("other", "净水设备巡检", "{village}净水站", True, (9, 0), 120, (2, 2), ("water",)),
    ShiftTemplate("other", "心理支持陪伴", "{town}便民服务中心", False, (14, 0), 120, (2, 3), ("psych",)),
    ShiftTemplate("other", "救灾物资转运", "{town}红十字物资仓库", False, (8, 0), 240, (2, 4), ("driver",)),
)

EMERGENCY_TEMPLATES: tuple[ShiftTemplate, ...] = (
    ShiftTemplate("emergency", "防汛应急备勤", "{town}防汛物资仓库", False, (18, 0), 240, (4, 6),
                  ("first_aid",), "汛期夜间备勤，接到通知后随队出动。"),
    ShiftTemplate("emergency", "台风应急值守", "{town}应急避灾安置点", False, (8, 0), 480, (4, 8),
                  description="协助安置转移群众、分发物资。"),
    ShiftTemplate("emergency", "山塘水库巡查备勤", "{village}山塘", True, (7, 0), 180, (2, 4), ("driver",)),
)
