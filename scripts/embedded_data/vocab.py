"""Vocabulary: names, objects, measure words, containers, cities, topics, in both languages."""
from __future__ import annotations

import re
import unicodedata

from pipeline.evaluation.scoring import tool_set as _tools

SEED = 1234

EN_MALE = ["Tom", "Ben", "Sam", "Jack", "Leo", "Max", "Dan", "Ryan", "Paul", "Ivan", "Omar", "Noah",
           "Finn", "Hugo", "Luke", "Adam", "Eric", "Owen", "Carl", "Mark"]
EN_FEMALE = ["Anna", "Lucy", "Mia", "Emma", "Lily", "Nora", "Kate", "Zoe", "Amy", "Eva", "Sara",
             "Ella", "Ruby", "Jane", "Rose", "Ivy", "Grace", "Alice", "Julia", "Maya"]
ZH_MALE = ["小明", "小刚", "李雷", "张伟", "王强", "小军", "刘洋", "陈亮", "小虎", "赵磊", "小宇",
           "周杰", "孙浩", "小龙", "马超", "小东"]
ZH_FEMALE = ["小红", "小丽", "韩梅梅", "王芳", "李娜", "小美", "张敏", "刘静", "小雪", "陈晨",
             "小芳", "林琳", "小云", "赵雅", "小兰", "周婷"]

# (singular, plural)
EN_OBJECTS = [("apple", "apples"), ("pencil", "pencils"), ("book", "books"), ("sticker", "stickers"),
              ("marble", "marbles"), ("cookie", "cookies"), ("orange", "oranges"), ("card", "cards"),
              ("toy car", "toy cars"), ("flower", "flowers"), ("balloon", "balloons"), ("egg", "eggs"),
              ("shell", "shells"), ("coin", "coins"), ("candy", "candies"), ("cupcake", "cupcakes"),
              ("stamp", "stamps"), ("ball", "balls"), ("banana", "bananas"), ("peach", "peaches"),
              ("pen", "pens"), ("rock", "rocks")]
# (measure word, noun)
ZH_OBJECTS = [("个", "苹果"), ("支", "铅笔"), ("本", "书"), ("张", "贴纸"), ("颗", "弹珠"), ("块", "饼干"),
              ("个", "橙子"), ("张", "卡片"), ("辆", "玩具车"), ("朵", "花"), ("个", "气球"), ("个", "鸡蛋"),
              ("个", "贝壳"), ("枚", "硬币"), ("颗", "糖"), ("个", "蛋糕"), ("张", "邮票"), ("个", "球"),
              ("根", "香蕉"), ("个", "桃子"), ("支", "钢笔"), ("块", "石头")]
EN_CONTAINERS = [("bag", "bags"), ("box", "boxes"), ("basket", "baskets"), ("pack", "packs"), ("jar", "jars"),
                 ("tray", "trays")]
ZH_CONTAINERS = ["袋", "盒", "篮", "包", "罐", "盘"]
EN_PLACES = ["box", "basket", "jar", "drawer", "bowl", "bag"]
ZH_PLACES = ["盒子", "篮子", "罐子", "抽屉", "碗", "书包"]

EN_CITIES = ["Paris", "London", "Tokyo", "Berlin", "Rome", "Sydney", "Cairo", "Moscow", "Toronto",
             "Madrid", "Seoul", "Beijing", "Shanghai", "Lisbon", "Vienna", "Dublin", "Oslo", "Lima"]
ZH_CITIES = ["北京", "上海", "深圳", "广州", "杭州", "成都", "南京", "武汉", "西安", "重庆", "天津",
             "苏州", "长沙", "青岛", "厦门", "昆明"]
EN_COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink", "brown"]
ZH_COLORS = ["红色", "蓝色", "绿色", "黄色", "黑色", "白色", "紫色", "橙色", "粉色", "棕色"]
EN_FOODS = ["rice", "noodles", "bread", "soup", "pizza", "salad", "cake", "fish", "dumplings", "eggs"]
ZH_FOODS = ["米饭", "面条", "面包", "汤", "披萨", "沙拉", "蛋糕", "鱼", "饺子", "鸡蛋"]
EN_ANIMALS = ["cat", "dog", "rabbit", "horse", "tiger", "panda", "bird", "duck", "fox", "sheep", "lion", "bear"]
ZH_ANIMALS = ["猫", "狗", "兔子", "马", "老虎", "熊猫", "小鸟", "鸭子", "狐狸", "羊", "狮子", "熊"]
EN_JOBS = ["teacher", "doctor", "farmer", "driver", "cook", "nurse", "pilot", "writer", "singer", "painter"]
ZH_JOBS = ["老师", "医生", "农民", "司机", "厨师", "护士", "飞行员", "作家", "歌手", "画家"]
EN_COUNTRIES = ["China", "France", "Japan", "Brazil", "Canada", "Egypt", "India", "Italy", "Spain", "Kenya"]
ZH_COUNTRIES = ["中国", "法国", "日本", "巴西", "加拿大", "埃及", "印度", "意大利", "西班牙", "肯尼亚"]
EN_FRUITS = ["apple", "banana", "pear", "grape", "orange", "peach", "mango", "lemon", "cherry", "plum", "melon", "kiwi"]
ZH_FRUITS = ["苹果", "香蕉", "梨", "葡萄", "橙子", "桃子", "芒果", "柠檬", "樱桃", "李子", "西瓜", "草莓"]
EN_SPORTS = ["football", "tennis", "swimming", "running", "basketball", "golf", "skiing", "boxing", "rowing", "cycling"]
ZH_SPORTS = ["足球", "网球", "游泳", "跑步", "篮球", "高尔夫", "滑雪", "拳击", "赛艇", "骑车"]
EN_VEGETABLES = ["carrot", "potato", "onion", "tomato", "cabbage", "pepper", "bean", "pea", "corn", "leek"]
ZH_VEGETABLES = ["胡萝卜", "土豆", "洋葱", "西红柿", "白菜", "辣椒", "豆角", "豌豆", "玉米", "韭菜"]

# category name en (plural noun), zh (measure word + noun), items en, items zh
CATEGORIES = [("fruits", "种水果", EN_FRUITS, ZH_FRUITS), ("colors", "种颜色", EN_COLORS, ZH_COLORS),
              ("animals", "种动物", EN_ANIMALS, ZH_ANIMALS), ("cities", "个城市", EN_CITIES, ZH_CITIES),
              ("sports", "种运动", EN_SPORTS, ZH_SPORTS), ("foods", "种食物", EN_FOODS, ZH_FOODS),
              ("jobs", "种职业", EN_JOBS, ZH_JOBS), ("countries", "个国家", EN_COUNTRIES, ZH_COUNTRIES),
              ("vegetables", "种蔬菜", EN_VEGETABLES, ZH_VEGETABLES)]

JSON_KEYS = ["name", "city", "age", "color", "food", "animal", "job", "country", "score", "year", "price", "item"]

# Knowledge base of the search_knowledge tool: query -> (en answer, zh answer, zh query). One table
# for the data and the tool that evaluates it: pipeline/evaluation/scoring/tool_set.py.
KNOWLEDGE = _tools.KNOWLEDGE
ZH_QUERY_TO_KEY = {v[2]: k for k, v in KNOWLEDGE.items()}

EN_CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "foggy", "snowy"]
ZH_CONDITIONS = ["晴", "多云", "小雨", "大风", "有雾", "小雪"]


def normalize(text: str) -> str:
    """Key used for held-out deduplication: NFKC, lower case, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()
